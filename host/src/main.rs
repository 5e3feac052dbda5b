//! The `jetplug` binary: a thin shell over [`jetplug::cli`].

fn main() -> std::process::ExitCode {
    jetplug::cli::malloc::keep_freed_memory();
    jetplug::cli::main()
}

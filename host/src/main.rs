//! The `jetplug` binary: a thin shell over [`jetplug::cli`].

fn main() -> std::process::ExitCode {
    jetplug::cli::main()
}

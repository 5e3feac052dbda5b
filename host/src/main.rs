//! The `jetplug` binary: a thin shell over [`jetplug::cli`].
//!
//! mimalloc is the global allocator: the per-message path (messages lifted
//! out of and lowered into the guest, settlement, COPY rows) allocates and
//! frees many small buffers across threads, where glibc's malloc spent a
//! sixth of the host's time under `jetplug bench indexer`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    jetplug::cli::main()
}

//! Times one command for the benchmarks in `bench/`: its wall time, from just before it is
//! spawned to just after it is reaped, and its peak resident memory.
//!
//! The shell's `date` before and after `/usr/bin/time` counted two more process starts and
//! GNU time's own in every measurement (about 3-5 ms here): nothing next to a 3 s run, but a
//! tenth of a 60 ms one. Here only the command's own spawn is inside the clock. Peak memory is
//! the kernel's `ru_maxrss` of this process's reaped children, and the command is the only
//! child, as GNU time reports it.
//!
//! `tokenledger-measure --out FILE -- CMD [ARGS...]`: the command inherits stdin, stdout and
//! stderr; FILE gets `wall_seconds max_rss_kib exit_code`; the exit code is the command's.

use clap::Parser;
use std::process::ExitCode;

#[derive(Parser)]
struct Args {
    /// Where to write `wall_seconds max_rss_kib exit_code`.
    #[arg(long)]
    out: std::path::PathBuf,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<std::ffi::OsString>,
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let start = std::time::Instant::now();
    let status = std::process::Command::new(program).args(rest).status()?;
    let wall = start.elapsed();
    let code = status.code().unwrap_or(128);
    std::fs::write(
        &args.out,
        format!(
            "{:.6} {} {code}\n",
            wall.as_secs_f64(),
            children_max_rss_kib()
        ),
    )?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// The largest resident set of any reaped child, in KiB (Linux reports `ru_maxrss` in KiB).
#[cfg(unix)]
#[allow(unsafe_code)]
fn children_max_rss_kib() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_CHILDREN is a valid target.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) } == 0;
    if !ok {
        return 0;
    }
    // SAFETY: zero-initialised, then filled by a successful getrusage.
    unsafe { usage.assume_init() }.ru_maxrss
}

#[cfg(not(unix))]
fn children_max_rss_kib() -> i64 {
    0
}

//! `help`, `sleep`, and the commands for QEMU features diskimg has no
//! counterpart of: `abort` and `sigraise` (which do what they say), the
//! blkdebug breakpoints and the zoned-device commands (which fail as they
//! do in qemu-io on an image without blkdebug or zones).

use std::time::Duration;

use super::args::num;
use super::num::strtol;
use super::session::Session;
use super::table::{find, help_line, CmdResult, Failed, COMMANDS};

/// `help [command]`
pub fn help_f(_s: &mut Session, argv: &[String]) -> CmdResult {
    let Some(name) = argv.get(1) else {
        let mut out = String::new();
        for c in COMMANDS {
            out.push_str(&help_line(c.name, c));
        }
        out.push_str("\nUse 'help commandname' for extended help.\n");
        out!("{out}");
        return Ok(());
    };
    let Some(c) = find(name) else {
        outln!("command {name} not found");
        return Err(Failed);
    };
    // The synopsis shows the name as the user typed it ("r" for read).
    out!("{}{}", help_line(name, c), c.help.unwrap_or(""));
    Ok(())
}

/// `sleep ms`
pub fn sleep_f(_s: &mut Session, argv: &[String]) -> CmdResult {
    let (ms, rest) = strtol(&argv[1]);
    if ms < 0 || !rest.is_empty() {
        outln!("{} is not a valid number", argv[1]);
        return Err(Failed);
    }
    std::thread::sleep(Duration::from_millis(ms as u64));
    Ok(())
}

/// `abort`: ends the program with abort(3), as qemu-io does.
pub fn abort_f(_s: &mut Session, _argv: &[String]) -> CmdResult {
    std::process::abort()
}

/// `sigraise signal`: raises the signal.
pub fn sigraise_f(_s: &mut Session, argv: &[String]) -> CmdResult {
    let sig = num(&argv[1])?;
    // NSIG on Linux: 65 (signals 1 to 64).
    if sig > 65 {
        outln!(
            "signal argument '{}' is too large to be a valid signal",
            argv[1]
        );
        return Err(Failed);
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: raise() only delivers a signal to this thread.
    unsafe {
        libc::raise(sig as libc::c_int);
    }
    Ok(())
}

/// `break event tag`: breakpoints need QEMU's blkdebug driver, which
/// diskimg has not; qemu-io answers the same on an image without it.
pub fn break_f(_s: &mut Session, _argv: &[String]) -> CmdResult {
    outln!("Could not set breakpoint: Operation not supported");
    Err(Failed)
}

/// `remove_break tag`
pub fn remove_break_f(_s: &mut Session, argv: &[String]) -> CmdResult {
    outln!(
        "Could not remove breakpoint {}: Operation not supported",
        argv[1]
    );
    Err(Failed)
}

/// `resume tag`
pub fn resume_f(_s: &mut Session, _argv: &[String]) -> CmdResult {
    outln!("Could not resume request: Operation not supported");
    Err(Failed)
}

/// `wait_break tag`: without blkdebug no request is ever suspended, and
/// qemu-io would wait forever; diskimg says so and fails instead of
/// hanging.
pub fn wait_break_f(s: &mut Session, argv: &[String]) -> CmdResult {
    s.error(format!(
        "wait_break {}: no request can be suspended: breakpoints (blkdebug) are not supported by diskimg",
        argv[1]
    ));
    Err(Failed)
}

/// The zoned-device commands: diskimg's images are not zoned devices, so
/// each fails after checking its numbers, with qemu-io's words for a
/// device without zones.
pub fn zone_f(_s: &mut Session, argv: &[String]) -> CmdResult {
    let what = match argv[0].as_str() {
        "zone_report" | "zrp" => "report",
        "zone_open" | "zo" => "open",
        "zone_close" | "zc" => "close",
        "zone_finish" | "zf" => "finish",
        "zone_reset" | "zrs" => "reset",
        _ => "append",
    };
    let args = argv[1..].iter().filter(|a| *a != "-p");
    for a in args {
        num(a)?;
    }
    outln!("zone {what} failed: Operation not supported");
    Err(Failed)
}

//! Command-line parsing with clap, made to behave like qemu-img's getopt:
//! options may be given as `--output=json` or `--output json`, long names
//! may be abbreviated, short flags bundle (`-pU`), a value may start with
//! `-`, the last of a repeated option wins, and errors are reported with
//! getopt's wording and qemu-img's `Try ... --help` hint, exit code 1.

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::ctx::Ctx;

/// A flag (no value).
pub fn flag(id: &'static str, short: Option<char>, long: Option<&'static str>) -> Arg {
    let mut a = Arg::new(id).action(ArgAction::SetTrue);
    if let Some(s) = short {
        a = a.short(s);
    }
    if let Some(l) = long {
        a = a.long(l);
    }
    a
}

/// An option that may be given several times, every value kept (`-o a=b
/// -o c=d`), as QemuOpts accumulates them.
pub fn opt_repeated(id: &'static str, short: Option<char>, long: Option<&'static str>) -> Arg {
    opt(id, short, long).action(ArgAction::Append)
}

/// An option taking one value.
pub fn opt(id: &'static str, short: Option<char>, long: Option<&'static str>) -> Arg {
    let mut a = Arg::new(id)
        .action(ArgAction::Set)
        .num_args(1)
        .allow_hyphen_values(true);
    if let Some(s) = short {
        a = a.short(s);
    }
    if let Some(l) = long {
        a = a.long(l);
    }
    a
}

/// A command with qemu-img's conventions: `-h/--help`, positional file names.
pub fn command(name: &'static str) -> Command {
    Command::new(name)
        .no_binary_name(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .infer_long_args(true)
        .args_override_self(true)
        .arg(flag("help", Some('h'), Some("help")))
        .arg(
            Arg::new("files")
                .action(ArgAction::Append)
                .num_args(0..)
                .value_parser(clap::value_parser!(OsString)),
        )
}

/// What parsing decided.
pub enum Parsed {
    /// Arguments parsed.
    Args(ArgMatches),
    /// Stop now with this exit code (help printed, or an error reported).
    Exit(i32),
}

/// Parses `argv` (the arguments after the command name). Prints `help`
/// for `-h`/`--help`; reports errors as getopt does.
pub fn parse(ctx: &Ctx, cmd_name: &str, cmd: Command, argv: &[OsString], help: &str) -> Parsed {
    let cmd = cmd.clone();
    match cmd.clone().try_get_matches_from(argv) {
        Ok(m) => {
            if m.get_flag("help") {
                print!("{help}");
                return Parsed::Exit(0);
            }
            Parsed::Args(m)
        }
        Err(e) => {
            // getopt stops at -h before looking further; honour a help flag
            // given before the error too.
            if argv
                .iter()
                .take_while(|a| *a != "--")
                .any(|a| a == "-h" || a == "--help")
            {
                print!("{help}");
                return Parsed::Exit(0);
            }
            let msg = getopt_message(&cmd, &e, argv);
            eprintln!("{} {}: {}", ctx.invoked, cmd_name, msg);
            ctx.hint(cmd_name);
            Parsed::Exit(1)
        }
    }
}

fn getopt_message(cmd: &Command, e: &clap::Error, argv: &[OsString]) -> String {
    let invalid = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    match e.kind() {
        ErrorKind::UnknownArgument => match invalid {
            Some(s) if s.starts_with("--") => {
                // clap may report only the name; getopt prints `--name=value`
                // as given.
                let given = argv
                    .iter()
                    .map(|a| a.to_string_lossy())
                    .find(|a| a.starts_with(&s))
                    .map(|a| a.into_owned())
                    .unwrap_or(s);
                format!("unrecognized option '{given}'")
            }
            Some(s) if s.starts_with('-') => {
                let c = s.chars().nth(1).unwrap_or('?');
                format!("invalid option -- '{c}'")
            }
            Some(s) => format!("unexpected argument '{s}'"),
            None => "invalid option".to_string(),
        },
        ErrorKind::InvalidValue | ErrorKind::NoEquals => {
            // A value is missing: the option was the last argument.
            let last = argv.last().map(|a| a.to_string_lossy().into_owned());
            match last {
                Some(l) if l.starts_with("--") => {
                    let name = l.trim_start_matches("--");
                    let full = cmd
                        .get_arguments()
                        .filter_map(|a| a.get_long())
                        .find(|long| long.starts_with(name))
                        .unwrap_or(name);
                    format!("option '--{full}' requires an argument")
                }
                Some(l) if l.starts_with('-') => {
                    let c = l.chars().last().unwrap_or('?');
                    format!("option requires an argument -- '{c}'")
                }
                _ => first_line(e),
            }
        }
        _ => first_line(e),
    }
}

fn first_line(e: &clap::Error) -> String {
    let s = e.to_string();
    let line = s.lines().next().unwrap_or("invalid arguments");
    line.trim_start_matches("error: ").to_string()
}

/// The value of an option, as a string.
pub fn get_str<'a>(m: &'a ArgMatches, id: &str) -> Option<&'a str> {
    m.get_one::<String>(id).map(|s| s.as_str())
}

/// The cache mode option `id` (`-t`/`-T`), writeback when absent; an
/// unknown name is returned as the error, for the caller's message.
pub fn cache_mode<'a>(m: &'a ArgMatches, id: &str) -> Result<diskimg::CacheMode, &'a str> {
    match get_str(m, id) {
        None => Ok(diskimg::CacheMode::Writeback),
        Some(v) => v.parse().map_err(|_| v),
    }
}

/// The positional file names.
pub fn files(m: &ArgMatches) -> Vec<OsString> {
    m.get_many::<OsString>("files")
        .map(|v| v.cloned().collect())
        .unwrap_or_default()
}

/// Output format of info/map/check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Text for people.
    Human,
    /// JSON.
    Json,
}

/// Parses `--output`; reports qemu-img's error when it is neither.
pub fn output(ctx: &Ctx, cmd: &str, m: &ArgMatches) -> Result<Output, i32> {
    match get_str(m, "output") {
        None | Some("human") => Ok(Output::Human),
        Some("json") => Ok(Output::Json),
        Some(other) => {
            ctx.error_with_hint(
                cmd,
                format!("--output expects 'human' or 'json' not '{other}'"),
            );
            Err(1)
        }
    }
}

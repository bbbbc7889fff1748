//! GNU getopt as qemu-io's commands and command line use it: short options
//! that bundle (`-qv`), option arguments attached or separate (`-P0x11`,
//! `-P 0x11`), options and operands in any order (GNU permutes), `--` ending
//! the options, long options with unique abbreviations, and glibc's error
//! wording.

/// A long option: its name, whether it takes an argument, and the
/// character it stands for.
pub type LongOpt = (&'static str, bool, char);

/// One thing getopt found, in command-line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// An option with its argument.
    Opt(char, Option<String>),
    /// A bad option; the message is glibc's (without a newline).
    Bad(String),
}

/// Options in the order given, and the operands in their order.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    /// Options, and bad options where they occurred.
    pub items: Vec<Item>,
    /// Operands (non-options).
    pub operands: Vec<String>,
}

/// Parses `args` (without argv[0]) against the short option string `spec`
/// (getopt syntax: a letter, `:` after it when it takes an argument) and
/// `longs`. `prog` prefixes the messages, as argv[0] does for getopt.
pub fn getopt(prog: &str, args: &[String], spec: &str, longs: &[LongOpt]) -> Parsed {
    let mut p = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            p.operands.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(body) = a.strip_prefix("--") {
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let exact = longs.iter().find(|l| l.0 == name);
            let candidates: Vec<&LongOpt> = match exact {
                Some(l) => vec![l],
                None => longs.iter().filter(|l| l.0.starts_with(name)).collect(),
            };
            match candidates.as_slice() {
                [] => p
                    .items
                    .push(Item::Bad(format!("{prog}: unrecognized option '{a}'"))),
                [l] => {
                    if l.1 {
                        let v = match value {
                            Some(v) => Some(v),
                            None if i < args.len() => {
                                i += 1;
                                Some(args[i - 1].clone())
                            }
                            None => None,
                        };
                        match v {
                            Some(v) => p.items.push(Item::Opt(l.2, Some(v))),
                            None => p.items.push(Item::Bad(format!(
                                "{prog}: option '--{}' requires an argument",
                                l.0
                            ))),
                        }
                    } else if value.is_some() {
                        p.items.push(Item::Bad(format!(
                            "{prog}: option '--{}' doesn't allow an argument",
                            l.0
                        )));
                    } else {
                        p.items.push(Item::Opt(l.2, None));
                    }
                }
                many => {
                    let names: Vec<String> = many.iter().map(|l| format!("'--{}'", l.0)).collect();
                    p.items.push(Item::Bad(format!(
                        "{prog}: option '--{name}' is ambiguous; possibilities: {}",
                        names.join(" ")
                    )));
                }
            }
            continue;
        }
        if a.len() < 2 || !a.starts_with('-') {
            p.operands.push(a.clone());
            continue;
        }
        let cluster: Vec<char> = a.chars().skip(1).collect();
        let mut j = 0;
        while j < cluster.len() {
            let c = cluster[j];
            j += 1;
            let pos = if c == ':' { None } else { spec.find(c) };
            let Some(pos) = pos else {
                p.items
                    .push(Item::Bad(format!("{prog}: invalid option -- '{c}'")));
                continue;
            };
            let takes_arg = spec[pos + c.len_utf8()..].starts_with(':');
            if !takes_arg {
                p.items.push(Item::Opt(c, None));
                continue;
            }
            if j < cluster.len() {
                let v: String = cluster[j..].iter().collect();
                p.items.push(Item::Opt(c, Some(v)));
            } else if i < args.len() {
                p.items.push(Item::Opt(c, Some(args[i].clone())));
                i += 1;
            } else {
                p.items.push(Item::Bad(format!(
                    "{prog}: option requires an argument -- '{c}'"
                )));
            }
            break;
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn permutes_and_bundles() {
        let p = getopt(
            "read",
            &v(&["0", "-qvP", "0x11", "512", "-s5"]),
            "bCl:pP:qrs:v",
            &[],
        );
        assert_eq!(p.operands, v(&["0", "512"]));
        assert_eq!(
            p.items,
            vec![
                Item::Opt('q', None),
                Item::Opt('v', None),
                Item::Opt('P', Some("0x11".into())),
                Item::Opt('s', Some("5".into())),
            ]
        );
    }

    #[test]
    fn errors_in_glibc_words() {
        let p = getopt("read", &v(&["-x", "-P"]), "P:", &[]);
        assert_eq!(
            p.items,
            vec![
                Item::Bad("read: invalid option -- 'x'".into()),
                Item::Bad("read: option requires an argument -- 'P'".into()),
            ]
        );
    }

    #[test]
    fn double_dash_ends_options() {
        let p = getopt("read", &v(&["0", "--", "-1"]), "q", &[]);
        assert_eq!(p.operands, v(&["0", "-1"]));
        assert!(p.items.is_empty());
    }

    #[test]
    fn long_options() {
        let longs = [
            ("cmd", true, 'c'),
            ("cache", true, 't'),
            ("read-only", false, 'r'),
        ];
        let p = getopt(
            "qemu-io",
            &v(&["--cmd=x", "--read", "--cac", "none", "--c", "f"]),
            "c:t:r",
            &longs,
        );
        assert_eq!(
            p.items,
            vec![
                Item::Opt('c', Some("x".into())),
                Item::Opt('r', None),
                Item::Opt('t', Some("none".into())),
                Item::Bad(
                    "qemu-io: option '--c' is ambiguous; possibilities: '--cmd' '--cache'".into()
                ),
            ]
        );
        assert_eq!(p.operands, v(&["f"]));
    }
}

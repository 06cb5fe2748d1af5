//! `serve --config-file server.toml`: the server's flags read from a file.
//!
//! The file is turned into the flags it names, placed before the command line's own, and the
//! whole is parsed by clap as one command line: every setting is checked by the same parser,
//! with the same defaults, as its flag (`serve` lets a later occurrence of a flag replace an
//! earlier one, so the command line wins). A key is a flag's long name without the dashes
//! (`max-sessions`, or `max_sessions`); a value is a string, an integer, a boolean (for a switch
//! such as `insecure`: `true` gives the switch, `false` leaves it out) or, for a flag that may be
//! repeated (`data`), an array. Unknown keys, a key given twice (as `a-b` and `a_b`) and values
//! of the wrong shape are refused, naming the file and the key; nothing in the file is ignored.
//! A repeated flag given on the command line replaces the file's list instead of adding to it.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::{ArgAction, Command};

/// The flag that names the file.
const FLAG: &str = "--config-file";

/// `argv` (`cleanroom serve ...`) with the settings of the `--config-file` it names, if any,
/// inserted as flags right after `serve`. `serve` is that subcommand's definition. Any other
/// command line is returned unchanged.
pub fn expand(argv: Vec<OsString>, serve: &Command) -> Result<Vec<OsString>> {
    if argv.get(1).and_then(|a| a.to_str()) != Some("serve") {
        return Ok(argv);
    }
    let Some(path) = file_named(&argv[2..]) else {
        return Ok(argv);
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("{FLAG} {}", path.display()))?;
    let given = |long: &str| {
        argv[2..].iter().any(|a| {
            a.to_str().is_some_and(|a| {
                a.strip_prefix("--")
                    .is_some_and(|f| f == long || f.starts_with(&format!("{long}=")))
            })
        })
    };
    let flags =
        flags_of(&text, serve, given).with_context(|| format!("{FLAG} {}", path.display()))?;
    let mut expanded = argv[..2].to_vec();
    expanded.extend(flags);
    expanded.extend_from_slice(&argv[2..]);
    Ok(expanded)
}

/// The file `--config-file FILE` or `--config-file=FILE` names.
fn file_named(args: &[OsString]) -> Option<std::path::PathBuf> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let text = arg.to_str()?;
        if text == FLAG {
            return args.next().map(Into::into);
        }
        if let Some(value) = text.strip_prefix(FLAG).and_then(|v| v.strip_prefix('=')) {
            return Some(Path::new(value).to_path_buf());
        }
    }
    None
}

/// The flags a server file's text stands for. `on_command_line(long)` says whether the command
/// line gives that flag itself (a repeated flag given there replaces the file's list).
fn flags_of(
    text: &str,
    serve: &Command,
    on_command_line: impl Fn(&str) -> bool,
) -> Result<Vec<OsString>> {
    let table: toml::Table = toml::from_str(text).context("not a TOML table of settings")?;
    let mut flags = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let Some(arg) = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .filter(|_| long != "config-file" && long != "help")
        else {
            bail!(
                "unknown setting {key:?}; the settings are serve's flags without the dashes: {}",
                settable(serve).join(", ")
            );
        };
        if !seen.insert(long.clone()) {
            bail!("setting {long:?} is given twice");
        }
        // `--name=value`, so that a value starting with `-` is still a value.
        let with_value = |value: &toml::Value| -> Result<OsString> {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                other => bail!(
                    "setting {key:?}: expected a string or an integer, got {}",
                    other.type_str()
                ),
            };
            Ok(format!("--{long}={text}").into())
        };
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(on)) => {
                if *on {
                    flags.push(format!("--{long}").into());
                }
            }
            (ArgAction::SetTrue, other) => {
                bail!("setting {key:?} is a switch: expected true or false, got {other}")
            }
            (ArgAction::Append, toml::Value::Array(items)) => {
                if !on_command_line(&long) {
                    for item in items {
                        flags.push(with_value(item)?);
                    }
                }
            }
            (ArgAction::Append, single) => {
                if !on_command_line(&long) {
                    flags.push(with_value(single)?);
                }
            }
            (_, toml::Value::Array(_)) => {
                bail!("setting {key:?} takes one value, not a list")
            }
            (_, single) => flags.push(with_value(single)?),
        }
    }
    Ok(flags)
}

/// The settings a file may hold: every long flag of `serve` except the file's own and help.
fn settable(serve: &Command) -> Vec<String> {
    serve
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| *l != "config-file" && *l != "help")
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    use super::super::ServeArgs;

    fn serve() -> Command {
        ServeArgs::augment_args(Command::new("serve").args_override_self(true))
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// Writes `text` as a server file and parses `cleanroom serve --config-file FILE <rest>`.
    fn parse(text: &str, rest: &[&str]) -> Result<ServeArgs> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("server.toml");
        std::fs::write(&path, text)?;
        let mut argv = os(&["cleanroom", "serve", FLAG, path.to_str().unwrap()]);
        argv.extend(os(rest));
        let argv = expand(argv, &serve())?;
        let root = Command::new("cleanroom").subcommand(serve());
        let matches = root.try_get_matches_from(argv)?;
        let (_, serve_matches) = matches.subcommand().expect("serve");
        Ok(ServeArgs::from_arg_matches(serve_matches)?)
    }

    fn pairs(args: &ServeArgs) -> Vec<(&str, &str)> {
        args.data
            .iter()
            .map(|(t, l)| (t.as_str(), l.as_str()))
            .collect()
    }

    const BASE: &str = r#"
        config = "collab.toml"
        member = "publisher"
        listen = "127.0.0.1:0"
        state = "state.db"
        data = ["impressions=imp.csv", "visits=visits.csv"]
    "#;

    #[test]
    fn the_file_gives_every_setting_and_the_command_line_overrides_it() {
        let text = format!(
            "{BASE}\nmax-sessions = 8\nmax_connections = 100\ninsecure = true\n\
             client-ca = \"partners.pem\"\n"
        );
        let args = parse(&text, &[]).unwrap();
        assert_eq!(args.member, "publisher");
        assert_eq!(args.client_ca, Some("partners.pem".into()));
        assert_eq!(args.max_sessions, 8);
        assert_eq!(args.max_connections, 100);
        assert!(args.insecure);
        assert_eq!(
            pairs(&args),
            [("impressions", "imp.csv"), ("visits", "visits.csv")]
        );
        let args = parse(
            &text,
            &[
                "--max-sessions",
                "2",
                "--member=retailer",
                "--data",
                "t=x.csv",
            ],
        )
        .unwrap();
        assert_eq!(args.max_sessions, 2);
        assert_eq!(args.member, "retailer");
        assert_eq!(args.max_connections, 100);
        assert_eq!(pairs(&args), [("t", "x.csv")]);
        // Repeated on the command line, still a list.
        let args = parse(&text, &["--data", "a=1.csv", "--data", "b=2.csv"]).unwrap();
        assert_eq!(pairs(&args), [("a", "1.csv"), ("b", "2.csv")]);
        // A switch set to false is left out.
        let args = parse(&format!("{BASE}\ninsecure = false\n"), &[]).unwrap();
        assert!(!args.insecure);
    }

    #[test]
    fn a_bad_file_is_refused_naming_the_setting() {
        let error = |text: &str| format!("{:#}", parse(text, &[]).unwrap_err());
        assert!(
            error(&format!("{BASE}\nmax-sesions = 8\n"))
                .contains("unknown setting \"max-sesions\"; the settings are serve's flags")
        );
        assert!(error(&format!("{BASE}\nconfig-file = \"x\"\n")).contains("unknown setting"));
        assert!(
            error(&format!("{BASE}\nmax-sessions = 8\nmax_sessions = 9\n"))
                .contains("\"max-sessions\" is given twice")
        );
        assert!(
            error(&format!("{BASE}\ninsecure = \"yes\"\n"))
                .contains("\"insecure\" is a switch: expected true or false")
        );
        assert!(
            error(&format!("{BASE}\nmax-sessions = [1, 2]\n"))
                .contains("takes one value, not a list")
        );
        assert!(
            error(&format!("{BASE}\nidle-timeout = 1.5\n"))
                .contains("expected a string or an integer, got float")
        );
        // Values are checked by the flag's own parser.
        assert!(error(&format!("{BASE}\nmax-sessions = -1\n")).contains("--max-sessions"));
        assert!(error("not toml at all =").contains("not a TOML table"));
    }

    #[test]
    fn other_command_lines_are_left_alone() {
        let argv = os(&["cleanroom", "query", FLAG, "x"]);
        assert_eq!(expand(argv.clone(), &serve()).unwrap(), argv);
        let argv = os(&["cleanroom", "serve", "--member", "m"]);
        assert_eq!(expand(argv.clone(), &serve()).unwrap(), argv);
        assert!(
            expand(
                os(&["cleanroom", "serve", FLAG, "/no/such/file.toml"]),
                &serve()
            )
            .is_err()
        );
    }
}

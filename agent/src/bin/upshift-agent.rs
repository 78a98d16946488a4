//! `upshift-agent` binary. So far: `[--root DIR] config show`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut root = PathBuf::from("/");
    let mut rest = Vec::new();
    while let Some(a) = args.next() {
        if a == "--root" {
            match args.next() {
                Some(d) => root = PathBuf::from(d),
                None => return usage(),
            }
        } else {
            rest.push(a);
        }
    }
    match rest
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["config", "show"] => match upshift_agent::config::load(&root)
            .and_then(|m| upshift_agent::settings::Settings::validate(&m, &root).map(|_| m))
        {
            Ok(m) => {
                print!("{}", m.show());
                ExitCode::SUCCESS
            }
            Err(errs) => {
                for e in errs {
                    eprintln!("config error: {e}");
                }
                ExitCode::from(64)
            }
        },
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: upshift-agent [--root DIR] config show");
    ExitCode::from(64)
}

//! `.dev.vars`, as wrangler reads it for `wrangler dev`: local secrets and
//! variables in a dotenv file beside the worker's configuration, on `env`
//! as strings, over `[vars]` (and under `--var`). Only `outpost dev` reads
//! it; a node never does.

use std::path::Path;

use anyhow::{bail, Context as _};

/// The file's name in the worker's directory.
pub const DEV_VARS_FILE: &str = ".dev.vars";

/// The variables of `<root>/.dev.vars`, or none if there is no such file.
pub fn read(root: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let path = root.join(DEV_VARS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text).with_context(|| format!("invalid {}", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Dotenv lines: `KEY=VALUE`, `export KEY=VALUE`, blank lines and `#`
/// comments; a value in double quotes may hold `\n`, `\"` and `\\`, one in
/// single quotes is taken as it is, an unquoted one is trimmed and ends at
/// ` #`.
pub fn parse(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut vars = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            bail!("line {}: expected KEY=VALUE", n + 1);
        };
        let key = key.trim();
        let valid = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            bail!("line {}: {key:?} is not a variable name", n + 1);
        }
        let value = value.trim();
        let value = if let Some(quoted) = value.strip_prefix('"') {
            let Some(inner) = quoted.strip_suffix('"') else { bail!("line {}: unterminated double quote", n + 1) };
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c != '\\' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(other) => out.push(other),
                    None => out.push('\\'),
                }
            }
            out
        } else if let Some(quoted) = value.strip_prefix('\'') {
            let Some(inner) = quoted.strip_suffix('\'') else { bail!("line {}: unterminated single quote", n + 1) };
            inner.to_string()
        } else {
            value.split(" #").next().unwrap_or_default().trim_end().to_string()
        };
        vars.push((key.to_string(), value));
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_lines_parse_as_wrangler_reads_them() {
        let vars = parse(
            "# local secrets\nAPI_KEY=abc123\nexport TOKEN = \"two\\nlines \\\"q\\\"\"\nRAW='a \\n b'\nURL=http://x/#frag # note\n\nEMPTY=\n",
        )
        .unwrap();
        assert_eq!(
            vars,
            [
                ("API_KEY".to_string(), "abc123".to_string()),
                ("TOKEN".into(), "two\nlines \"q\"".into()),
                ("RAW".into(), "a \\n b".into()),
                ("URL".into(), "http://x/#frag".into()),
                ("EMPTY".into(), "".into()),
            ]
        );
    }

    #[test]
    fn bad_lines_name_their_number() {
        assert!(parse("OK=1\nnot a line").unwrap_err().to_string().contains("line 2"));
        assert!(parse("1X=1").unwrap_err().to_string().contains("not a variable name"));
        assert!(parse("A=\"open").unwrap_err().to_string().contains("unterminated"));
    }
}

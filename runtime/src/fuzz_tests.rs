//! Module specifiers and Durable Object ids fuzzed: whatever a worker
//! imports, a resolved module is a plain relative path inside its bundle;
//! whatever string a worker passes as an id, it is refused or it is an id
//! of that namespace, written the one way ids are written.

use std::path::{Component, Path};

use crate::ext::bindings::durable_objects::ids::{id_from_name, id_to_hex, parse_id};
use crate::loader::{bundle_relative_path, bundle_url, resolve_specifier};

/// Input: `specifier \n referrer path`.
fn check_specifier(input: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(input);
    let (specifier, referrer) = text.split_once('\n').unwrap_or((&text, "worker.js"));
    // A referrer is a module of the bundle: its URL is made the one way
    // module URLs are made, from a file's relative path.
    let referrer = Path::new(referrer.trim_start_matches('/'));
    if referrer.components().any(|c| !matches!(c, Component::Normal(_))) || referrer.as_os_str().is_empty() {
        return 0;
    }
    let referrer = bundle_url(referrer);
    if bundle_relative_path(&referrer).is_err() {
        // The loader loads no module of that name: it imports nothing.
        return 0;
    }
    // The guard in resolve_specifier must never be needed: the checks
    // before the join keep the url crate's panics out of reach.
    if !specifier.contains(':')
        && (specifier.starts_with("./") || specifier.starts_with("../") || specifier.starts_with('/'))
    {
        let _ = deno_core::resolve_import(specifier, referrer.as_str());
    }
    let Ok(url) = resolve_specifier(specifier, referrer.as_str()) else { return 1 };
    if url.scheme() != "file" {
        assert_eq!(url.as_str(), "cloudflare:workers", "{specifier:?} resolved to {url}");
        return 2;
    }
    let path = bundle_relative_path(&url).unwrap_or_else(|err| panic!("{specifier:?} resolved to {url}: {err}"));
    assert!(path.is_relative(), "{specifier:?} gave {path:?}");
    for component in path.components() {
        assert!(matches!(component, Component::Normal(_)), "{specifier:?} gave {path:?}");
        let name = component.as_os_str().to_string_lossy();
        assert!(!name.contains(['/', '\\', '\0']), "{specifier:?} gave {path:?}");
    }
    3 + path.components().count().min(4) as u64
}

#[test]
fn fuzz_module_specifiers() {
    let seeds: &[&[u8]] = &[
        b"./x.js",
        b"../x.js\nsub/y.js",
        b"./..%2f..%2fother%2fconfig.json",
        b"./%2e%2e/x.js",
        b"/etc/passwd",
        b"file:///bundle/x.js",
        b"file:///etc/passwd",
        b"cloudflare:workers",
        b"./a%5c..%5cb.js",
        b"./caf%C3%A9.js",
        b"./a//b.js?x#y",
    ];
    let dictionary: &[&[u8]] =
        &[b"./", b"../", b"%2f", b"%2F", b"%2e", b"%5c", b"%00", b"..", b"/", b"?", b"#", b"file:///bundle/"];
    let report =
        outpost_fuzz::run(&outpost_fuzz::Target { name: "module-specifiers", seeds, dictionary }, check_specifier);
    assert!(report.outcomes > 1, "{report:?}");
}

/// Input: `namespace \n id text`.
fn check_id(input: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(input);
    let (namespace, id) = text.split_once('\n').unwrap_or(("w:Counter", &text));
    match parse_id(namespace, id) {
        Ok(parsed) => {
            assert_eq!(id_to_hex(&parsed), id.to_ascii_lowercase(), "an id is written one way");
            assert_eq!(parse_id(namespace, &id_to_hex(&parsed)), Ok(parsed));
            10
        }
        Err(err) => {
            // Ids made from names always parse in their namespace.
            let made = id_from_name(namespace, id);
            assert_eq!(parse_id(namespace, &id_to_hex(&made)), Ok(made));
            1 + err.to_string().len() as u64 % 5
        }
    }
}

#[test]
fn fuzz_durable_object_ids() {
    let made = id_to_hex(&id_from_name("w:Counter", "a"));
    let valid = format!("w:Counter\n{made}");
    let upper = format!("w:Counter\n{}", made.to_ascii_uppercase());
    let other = format!("w:Other\n{made}");
    let seeds: Vec<&[u8]> = vec![valid.as_bytes(), upper.as_bytes(), other.as_bytes(), b"", b"w:Counter\nzz"];
    let report = outpost_fuzz::run(
        &outpost_fuzz::Target { name: "object-ids", seeds: &seeds, dictionary: &[b"0", b"f", b"\n", b"w:"] },
        check_id,
    );
    assert!(report.outcomes > 1, "{report:?}");
}

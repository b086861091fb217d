//! Checks the layering that `lib.rs` describes: no module imports one from a
//! layer above its own.

use std::path::Path;

/// Layer of each module (as `lib.rs` lists them); `conn`'s parts sit in
/// different layers, the other folders are one module each.
const LAYERS: &[(&str, u8)] = &[
    ("consts", 0),
    ("clock", 0),
    ("error", 0),
    ("event", 0),
    ("gather", 0),
    ("names", 0),
    ("router", 0),
    ("origin", 0),
    ("refusal", 0),
    ("stats", 0),
    ("drain", 0),
    ("link_auth", 0),
    ("logins", 0),
    ("tls", 0),
    ("wsframe", 0),
    ("sources", 0),
    ("paths", 0),
    ("framemem", 0),
    ("frame", 1),
    ("msg", 1),
    ("node", 1),
    ("mesh", 1),
    ("kvop", 1),
    ("access", 2),
    ("queues", 2),
    ("kv", 2),
    ("queues::state", 2),
    ("store", 2),
    ("store::disk", 2),
    ("store::record", 2),
    ("store::writer", 2),
    ("subs", 2),
    ("conn::outq", 2),
    ("conn::flow", 2),
    ("conn::readbuf", 2),
    ("conn::io", 2),
    ("conn::state", 2),
    ("conn::reply", 2),
    ("owner", 3),
    ("home", 3),
    ("shard", 4),
    ("conn", 5),
    ("conn::handler", 5),
    ("conn::kv", 5),
    ("conn::task", 5),
    ("conn::auth", 5),
    ("net", 5),
    ("web", 5),
    ("memcache", 5),
    ("cluster", 5),
    ("sysstats", 5),
    ("boot", 6),
    ("server", 6),
    ("reload", 6),
    ("lib", 6),
    // Tests only.
    ("conn::state_tests", 7),
    ("owner_tests", 7),
    ("queues_tests", 7),
    ("executor_guards", 7),
    ("layering", 7),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|&(_, l)| l)
}

/// The module a source file is, as `LAYERS` names it.
fn module_of(rel: &Path) -> String {
    let parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    match parts.as_slice() {
        [one] => one.clone(),
        [dir, file, ..] if dir == "conn" && file != "mod" => format!("conn::{file}"),
        [dir, ..] => dir.clone(),
        [] => String::new(),
    }
}

/// The modules a file refers to with `crate::` (and `super::` inside `conn`),
/// comments left out.
fn references(module: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for (prefix, base) in [("crate::", ""), ("super::", "conn::")] {
            if prefix == "super::" && !module.starts_with("conn::") {
                continue;
            }
            let mut rest = code;
            while let Some(i) = rest.find(prefix) {
                rest = &rest[i + prefix.len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let name = format!("{base}{name}");
                let full = if name == "conn" && rest.starts_with("conn::") {
                    let sub: String = rest["conn::".len()..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    format!("conn::{sub}")
                } else {
                    name
                };
                out.push(full);
            }
        }
    }
    out
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn layering_holds() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut wrong = Vec::new();
    for path in &all {
        let module = module_of(path.strip_prefix(&src).unwrap());
        let Some(own) = layer(&module) else {
            wrong.push(format!(
                "{module}: not in LAYERS (nor in lib.rs's overview?)"
            ));
            continue;
        };
        let text = std::fs::read_to_string(path).unwrap();
        for used in references(&module, &text) {
            // `crate::conn` alone (e.g. a path continuing on the next line) is
            // the folder; `crate::X` with X unknown is a type from lib.rs.
            let Some(l) = layer(&used) else { continue };
            if l > own {
                wrong.push(format!(
                    "{} (layer {own}) uses {used} (layer {l})",
                    path.display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_sees_an_upward_import() {
    let refs = references(
        "owner",
        "use crate::shard::Shard;\n// use crate::boot::X;\n",
    );
    assert_eq!(refs, ["shard"]);
    assert!(layer("shard") > layer("owner"));
    assert_eq!(
        references("conn::state", "use super::outq::OutQueue;"),
        ["conn::outq"]
    );
    assert_eq!(module_of(Path::new("conn/task.rs")), "conn::task");
    assert_eq!(
        module_of(Path::new("conn/state/delivery.rs")),
        "conn::state"
    );
    assert_eq!(module_of(Path::new("web/ws.rs")), "web");
}

//! Tidy: the module layering written at the top of ARCHITECTURE.md, checked on the source.
//!
//! The crate's modules form a stack: each may use only modules of a lower layer. The crate
//! root (`lib.rs`, start-up) and `fuzz` (the fuzz targets' door) sit on top and wire
//! everything. Unit-test modules (`#[cfg(test)] mod …`) are not checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Lowest first. A new module must be given a layer here (the test says so).
const LAYERS: &[&[&str]] = &[
    &["util", "tls"],
    &[
        "code",
        "failpoint",
        "ids",
        "platform",
        "http_client",
        "configgen",
        "gz",
    ],
    &["github", "client"],
    &["catalogue", "board", "logger"],
    &["store"],
    &["events"],
    &["supervisor"],
    &["trust", "vif"],
    &["routing"],
    &["install"],
    &["api"],
    &["config"],
    &["cli"],
];

/// Above every layer: may use anything.
const ROOTS: &[&str] = &["lib", "main", "fuzz"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without whole-line comments and without its unit-test module.
fn code(text: &str) -> String {
    let body = match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => text,
    };
    body.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The crate's top-level modules a piece of code names: `crate::x…` and `use crate::{x, y::…}`.
fn used_modules(code: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of a grouped import: split at depth-0 commas.
            let mut depth = 0;
            let mut start = 0;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.push(ident(group[start..j].trim()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(ident(group[start..j].trim()));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = first.trim_end_matches(".rs").to_owned();
        modules.entry(top).or_default().push(f.clone());
    }
    assert!(modules.len() > 10, "found only {modules:?} under {src:?}");
    let mut broken = Vec::new();
    for (module, files) in &modules {
        if ROOTS.contains(&module.as_str()) {
            continue;
        }
        let Some(mine) = layer_of(module) else {
            broken.push(format!(
                "module `{module}` has no layer: add it to LAYERS in tests/tidy.rs and to the layering in ARCHITECTURE.md"
            ));
            continue;
        };
        for f in files {
            let text = std::fs::read_to_string(f).unwrap();
            for used in used_modules(&code(&text)) {
                if used == *module {
                    continue;
                }
                match layer_of(&used) {
                    Some(theirs) if theirs < mine => {}
                    Some(_) => broken.push(format!(
                        "{}: `{module}` (layer {mine}) uses `{used}` (layer {}), which is not below it",
                        f.strip_prefix(&src).unwrap().display(),
                        layer_of(&used).unwrap()
                    )),
                    None if modules.contains_key(&used) => broken.push(format!(
                        "{}: `{module}` uses `{used}`, which is not in any layer",
                        f.strip_prefix(&src).unwrap().display()
                    )),
                    // Not a module: a macro or item at the crate root would show up here.
                    None => broken.push(format!(
                        "{}: `{module}` uses `crate::{used}`, which is no module of the crate",
                        f.strip_prefix(&src).unwrap().display()
                    )),
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "the layering in ARCHITECTURE.md is broken:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn the_checker_sees_grouped_imports_and_skips_comments_and_tests() {
    let text = "use crate::{a, b::{C, d}, e::f};\n// crate::g\nfn x() { crate::h::i(); }\n#[cfg(test)]\nmod tests { use crate::j; }\n";
    assert_eq!(used_modules(&code(text)), ["a", "b", "e", "h"]);
}

//! Content fingerprints of a table's inputs: the model folders and the metric backbones (the
//! dataset's prompts and seeds are compared as the protocol; its references differ per subject
//! anyway). A bench-table folder and every table it writes record them, so that cells scored
//! on other models are never silently pooled: retraining the toy world changes the committed
//! models' bytes but not their paths, and the settings check of stale cells cannot see that.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// SHA-256 (hex) of a file, or of a folder's tree: every regular file below it, in path order,
/// as (relative path, SHA-256 of the bytes). Two copies of a folder in other places have the
/// same fingerprint; a changed, added, removed or renamed file changes it.
pub fn tree_sha256(path: &Path) -> Result<String> {
    if path.is_file() {
        return runtime::manifest::sha256_file(path);
    }
    let mut hash = Sha256::new();
    for (rel, sha) in runtime::manifest::file_hashes(path)? {
        hash.update(format!("{rel}\0{sha}\n"));
    }
    Ok(runtime::model_files::hex(&hash.finalize()))
}

/// Fingerprints of the inputs named in `named` (role → local path). Roles whose value is not a
/// local path (a Hugging Face repo id, resolved elsewhere) are left out.
pub fn fingerprints(named: &[(String, PathBuf)]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (role, path) in named {
        if path.exists() {
            out.insert(role.clone(), tree_sha256(path)?);
        }
    }
    Ok(out)
}

/// The roles whose fingerprints differ between `was` and `now`, one phrase each (a role only
/// one of them records counts as a difference); empty when they agree.
pub fn differences(was: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> Vec<String> {
    let roles: BTreeSet<&String> = was.keys().chain(now.keys()).collect();
    roles
        .into_iter()
        .filter_map(|role| match (was.get(role), now.get(role)) {
            (Some(a), Some(b)) if a == b => None,
            (Some(a), Some(b)) => Some(format!(
                "{role}: sha256 {} then, {} now",
                short(a),
                short(b)
            )),
            (Some(_), None) => Some(format!("{role}: recorded then, absent now")),
            (None, _) => Some(format!("{role}: absent then, recorded now")),
        })
        .collect()
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

/// Checks `now` against the fingerprints recorded in `file` (written there when missing, so a
/// folder's first run records what its cells are trained on). Refuses a change, naming the
/// inputs and `what_to_do`.
pub fn check_or_record(
    file: &Path,
    now: &BTreeMap<String, String>,
    what_to_do: &str,
) -> Result<()> {
    if file.is_file() {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let was: BTreeMap<String, String> = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a fingerprint file", file.display()))?;
        let diff = differences(&was, now);
        if !diff.is_empty() {
            bail!(
                "the inputs changed since {} was written ({}): {what_to_do}",
                file.display(),
                diff.join("; ")
            );
        }
        return Ok(());
    }
    crate::checkpoint::write_text_atomic(file, &serde_json::to_string_pretty(now)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path, files: &[(&str, &[u8])]) {
        for (rel, bytes) in files {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
    }

    #[test]
    fn a_tree_fingerprint_follows_names_and_bytes_not_place() {
        let t = tempfile::tempdir().unwrap();
        let files: &[(&str, &[u8])] =
            &[("unet/config.json", b"{}"), ("unet/w.safetensors", b"abc")];
        tree(&t.path().join("a"), files);
        tree(&t.path().join("b"), files);
        let a = tree_sha256(&t.path().join("a")).unwrap();
        // The format is pinned: committed tables (docs/toy-table) record these hashes. Computed
        // apart with Python's hashlib over "{rel}\0{sha256 hex}\n" per file in path order.
        assert_eq!(
            a,
            "76b0c8326df29371416ed7daddf367224dc6403e6946907aa50f70cf94b2515b"
        );
        assert_eq!(a, tree_sha256(&t.path().join("b")).unwrap());
        // One byte, a rename, an added file: each changes it.
        tree(&t.path().join("b"), &[("unet/w.safetensors", b"abd")]);
        assert_ne!(a, tree_sha256(&t.path().join("b")).unwrap());
        tree(
            &t.path().join("c"),
            &[("unet/config.json", b"{}"), ("unet/v.safetensors", b"abc")],
        );
        assert_ne!(a, tree_sha256(&t.path().join("c")).unwrap());
        tree(&t.path().join("a"), &[("vae/config.json", b"{}")]);
        assert_ne!(a, tree_sha256(&t.path().join("a")).unwrap());
        // A file is its bytes' hash.
        assert_eq!(
            tree_sha256(&t.path().join("a/unet/w.safetensors")).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_changed_input_is_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        tree(t.path(), &[("student/w", b"1"), ("towers/w", b"2")]);
        let named = |root: &Path| {
            vec![
                ("student".to_string(), root.join("student")),
                ("towers".to_string(), root.join("towers")),
                ("teacher".to_string(), PathBuf::from("org/not-a-local-path")),
            ]
        };
        let now = fingerprints(&named(t.path())).unwrap();
        assert_eq!(now.len(), 2, "a repo id has no fingerprint: {now:?}");
        let file = t.path().join("inputs.json");
        check_or_record(&file, &now, "retrain").unwrap();
        assert!(file.is_file());
        check_or_record(&file, &now, "retrain").unwrap();
        tree(t.path(), &[("student/w", b"3")]);
        let changed = fingerprints(&named(t.path())).unwrap();
        let err = check_or_record(&file, &changed, "retrain")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("student: sha256") && !err.contains("towers"),
            "{err}"
        );
        assert!(err.ends_with("retrain"), "{err}");
    }
}

//! `trainer merge-tables`: one table from the tables of disjoint subjects, scored in separate
//! runs (other machines without shared storage, or other sessions: the toy table grows a few
//! subjects at a time in `docs/toy-table/`). Each subject's numbers are kept; the overall ones
//! are pooled so that they equal what aggregating every image at once gives.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::best_of::BestOf;
use super::paired::{find_reference, Paired};
use super::table::{write_tables, Comparisons, Metrics, TableRow};

/// Merges tables of disjoint subjects (separate `trainer eval` or `bench-table` outputs) into
/// one: rows in order of first appearance, each subject's numbers as they were, the overall
/// numbers pooled over the subjects ([`Metrics::pool`], equal to aggregating all the images at
/// once). A (method, steps, subject) cell found in two tables is refused, naming both.
pub fn merge(tables: &[(String, Vec<TableRow>)]) -> Result<Vec<TableRow>> {
    let mut merged: Vec<TableRow> = Vec::new();
    // Which input each cell came from, to name both sides of a clash.
    let mut origin: BTreeMap<(String, usize, String), &str> = BTreeMap::new();
    for (name, rows) in tables {
        for row in rows {
            let at = match merged
                .iter()
                .position(|m| m.label == row.label && m.steps == row.steps)
            {
                Some(i) => i,
                None => {
                    merged.push(TableRow {
                        label: row.label.clone(),
                        steps: row.steps,
                        overall: row.overall, // pooled over the subjects below
                        subjects: BTreeMap::new(),
                    });
                    merged.len() - 1
                }
            };
            for (subject, m) in &row.subjects {
                let key = (row.label.clone(), row.steps, subject.clone());
                if let Some(first) = origin.insert(key, name) {
                    bail!(
                        "{:?} on {subject} is in both {first} and {name}: merge tables of different subjects only",
                        row.title()
                    );
                }
                merged[at].subjects.insert(subject.clone(), *m);
            }
        }
    }
    for row in &mut merged {
        row.overall = Metrics::pool(row.subjects.values());
    }
    Ok(merged)
}

/// Reads the rows and the `meta` object of a `metrics.json`.
pub fn read_table(path: &Path) -> Result<(Vec<TableRow>, serde_json::Value)> {
    #[derive(Deserialize)]
    struct File {
        meta: serde_json::Value,
        rows: Vec<TableRow>,
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: File = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a metrics.json written by trainer eval or bench-table",
            path.display()
        )
    })?;
    Ok((file.rows, file.meta))
}

/// The fingerprints ([`super::fingerprint`]: models and metric backbones) of the tables read
/// so far.
#[derive(Default)]
struct SeenInputs {
    /// The first table read, and whether it recorded fingerprints.
    first: Option<(String, bool)>,
    /// By role: its fingerprint and the table that first recorded it.
    roles: BTreeMap<String, (String, String)>,
}

impl SeenInputs {
    /// The union of the fingerprints read (they agree wherever two tables record a role), or
    /// `None` when the tables record none.
    fn merged(&self) -> Option<BTreeMap<String, String>> {
        let (_, recorded) = self.first.as_ref()?;
        recorded.then(|| {
            self.roles
                .iter()
                .map(|(role, (sha, _))| (role.clone(), sha.clone()))
                .collect()
        })
    }
}

/// Refuses a table whose fingerprints differ from an earlier table's in a role both record
/// (naming that table), or which records none while the earlier ones do (or the reverse): its
/// numbers may come from other models at the same paths. Roles only some tables record (a
/// `set` path of one method) are compared wherever they recur.
fn check_same_inputs(name: &str, meta: &serde_json::Value, seen: &mut SeenInputs) -> Result<()> {
    let mine: Option<BTreeMap<String, String>> = match meta.get("inputs") {
        None => None,
        Some(v) => Some(
            serde_json::from_value(v.clone())
                .with_context(|| format!("{name}: meta.inputs is not a map of fingerprints"))?,
        ),
    };
    let (first_name, first_recorded) = seen
        .first
        .get_or_insert_with(|| (name.to_string(), mine.is_some()))
        .clone();
    if first_recorded != mine.is_some() {
        let (with, without) = if mine.is_some() {
            (name, first_name.as_str())
        } else {
            (first_name.as_str(), name)
        };
        bail!(
            "{without} records no fingerprints of its models (an older trainer wrote it) and {with} does: nothing shows they scored the same models. Merge it only with tables like it, or score it again"
        );
    }
    for (role, sha) in mine.unwrap_or_default() {
        match seen.roles.get(&role) {
            None => {
                seen.roles.insert(role, (sha, name.to_string()));
            }
            Some((was, from)) if *was != sha => {
                let diff = super::fingerprint::differences(
                    &BTreeMap::from([(role.clone(), was.clone())]),
                    &BTreeMap::from([(role, sha)]),
                );
                bail!(
                    "{name} was scored on other inputs than {from} ({}): merge tables of the same models and backbones only",
                    diff.join("; ")
                );
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A `metrics.json` path, or the one inside a folder.
fn metrics_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("metrics.json")
    } else {
        path.to_path_buf()
    }
}

/// Merges the `metrics.json` of `inputs` (files or folders) into `out`'s `metrics.*`. The
/// inputs must share the protocol (prompts per subject and seeds): pooling images of other
/// protocols would make a number no protocol gives. Every row is compared subject by subject
/// with the row `reference` names ([`find_reference`]; default the first row), and, when
/// `versus` names rows (the same way), the reference against the best of them on each subject.
pub fn merge_files(
    inputs: &[PathBuf],
    out: &Path,
    reference: Option<&str>,
    versus: &[String],
) -> Result<Merged> {
    let mut tables = Vec::new();
    let mut protocol: Option<(String, serde_json::Value, serde_json::Value)> = None;
    let mut seen_inputs = SeenInputs::default();
    for input in inputs {
        let path = metrics_file(input);
        let (rows, meta) = read_table(&path)?;
        let name = path.display().to_string();
        let mine = (meta["prompts_per_subject"].clone(), meta["seeds"].clone());
        match &protocol {
            None => protocol = Some((name.clone(), mine.0, mine.1)),
            Some((first, prompts, seeds)) => {
                if (prompts, seeds) != (&mine.0, &mine.1) {
                    bail!(
                        "{name} has {} prompts per subject and seeds {}, {first} has {prompts} and {seeds}: merge tables of the same protocol only",
                        mine.0, mine.1
                    );
                }
            }
        }
        check_same_inputs(&name, &meta, &mut seen_inputs)?;
        tables.push((name, rows));
    }
    let Some((_, prompts, seeds)) = protocol else {
        bail!("no tables to merge: name at least one metrics.json");
    };
    let rows = merge(&tables)?;
    let reference = match reference {
        Some(spec) => find_reference(&rows, spec, "--reference")?,
        None => 0,
    };
    let versus = versus
        .iter()
        .map(|spec| {
            let i = find_reference(&rows, spec, "--versus")?;
            if i == reference {
                bail!(
                    "--versus {spec:?} names the reference row itself: name the rows to compare it with"
                );
            }
            Ok(i)
        })
        .collect::<Result<Vec<usize>>>()?;
    let subjects: std::collections::BTreeSet<&String> =
        rows.iter().flat_map(|r| r.subjects.keys()).collect();
    let note = format!(
        "{} subjects, merged from {} tables; {prompts} prompts per subject, seeds {seeds}.",
        subjects.len(),
        tables.len()
    );
    let mut meta = serde_json::json!({
        "merged_from": tables.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        "subjects": subjects,
        "prompts_per_subject": prompts,
        "seeds": seeds,
    });
    // The merged table is an input of later merges: it carries its tables' fingerprints.
    if let Some(inputs) = seen_inputs.merged() {
        meta["inputs"] = serde_json::to_value(inputs)?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let (paired, best) = write_tables(
        &rows,
        out,
        meta,
        &[note],
        "DreamBench table",
        Comparisons {
            reference,
            versus: &versus,
        },
    )?;
    Ok(Merged { rows, paired, best })
}

/// What [`merge_files`] merged and compared.
pub struct Merged {
    /// The merged rows.
    pub rows: Vec<TableRow>,
    /// Every row against the reference, subject by subject (none when no row shares two
    /// subjects with it).
    pub paired: Option<Paired>,
    /// The reference against the best of the `versus` rows per subject (none without them).
    pub best: Option<BestOf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::protocol::ScoreRecord;
    use crate::eval::table::aggregate;
    use crate::eval::table::tests::record;

    /// Merging the tables of each subject gives the table of all records at once; a subject in
    /// two tables is refused.
    #[test]
    fn merged_subject_tables_equal_the_table_of_all_records() {
        let mut recs = Vec::new();
        for (k, subject) in ["dog", "cat", "can"].iter().enumerate() {
            for i in 0..(3 + 2 * k) {
                let v = (i as f64 * 0.7 + k as f64).sin();
                recs.push(record("A", subject, 1, v));
                if *subject != "cat" {
                    recs.push(record("B", subject, 4, v * v));
                }
            }
        }
        let all = aggregate(&recs);
        let per_subject: Vec<(String, Vec<TableRow>)> = ["cat", "dog", "can"]
            .iter()
            .map(|s| {
                let mine: Vec<ScoreRecord> =
                    recs.iter().filter(|r| r.subject == *s).cloned().collect();
                (s.to_string(), aggregate(&mine))
            })
            .collect();
        let merged = merge(&per_subject).unwrap();
        assert_eq!(merged.len(), all.len());
        for (m, a) in merged.iter().zip(&all) {
            assert_eq!((m.label.as_str(), m.steps), (a.label.as_str(), a.steps));
            assert_eq!(m.subjects, a.subjects);
            for (x, y) in [
                (m.overall.clip_t, a.overall.clip_t),
                (m.overall.clip_i, a.overall.clip_i),
                (m.overall.dino, a.overall.dino),
                (m.overall.clip_self.unwrap(), a.overall.clip_self.unwrap()),
            ] {
                assert_eq!(x.n, y.n);
                assert!((x.mean - y.mean).abs() < 1e-12 && (x.se - y.se).abs() < 1e-12);
            }
        }
        let clash = merge(&[
            per_subject[1].clone(),
            ("again".into(), per_subject[1].1.clone()),
        ]);
        let e = clash.unwrap_err().to_string();
        assert!(e.contains("dog") && e.contains("again"), "{e}");
    }

    /// Tables of other models (same roles, other fingerprints) are refused, naming the role;
    /// roles only one table records are not compared; a table without fingerprints is not
    /// pooled with one that has them.
    #[test]
    fn tables_of_other_models_are_refused() {
        let meta = |v: serde_json::Value| serde_json::json!({ "inputs": v });
        let mut first = SeenInputs::default();
        let a = meta(serde_json::json!({"student": "aa", "clip": "cc"}));
        check_same_inputs("a.json", &a, &mut first).unwrap();
        let b = meta(serde_json::json!({"student": "aa", "clip": "cc", "towers": "tt"}));
        check_same_inputs("b.json", &b, &mut first).unwrap();
        let c = meta(serde_json::json!({"student": "ab", "clip": "cc"}));
        let e = check_same_inputs("c.json", &c, &mut first)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.json") && e.contains("a.json") && e.contains("student"),
            "{e}"
        );
        assert!(!e.contains("clip"), "{e}");
        let old = serde_json::json!({"seeds": [0]});
        let e = check_same_inputs("old.json", &old, &mut first)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("old.json records no fingerprints"), "{e}");
        // A role only a later table recorded is compared too, naming that table.
        let d = meta(serde_json::json!({"student": "aa", "towers": "tu"}));
        let e = check_same_inputs("d.json", &d, &mut first)
            .unwrap_err()
            .to_string();
        assert!(e.contains("than b.json") && e.contains("towers"), "{e}");
        let union = first.merged().unwrap();
        let roles: Vec<&str> = union.keys().map(String::as_str).collect();
        assert_eq!(roles, ["clip", "student", "towers"]);
        let mut only_old = SeenInputs::default();
        check_same_inputs("old.json", &old, &mut only_old).unwrap();
        check_same_inputs("old2.json", &old, &mut only_old).unwrap();
        assert_eq!(only_old.merged(), None);
    }
}

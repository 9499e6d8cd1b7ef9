//! `trainer bench-table`: the paper's Table 1 protocol as one resumable command. A manifest
//! (YAML) lists methods (each a set of `trainer fit` overrides, the steps to evaluate and
//! whether to evaluate the teacher) and subjects; every (fit, subject) unit trains once into
//! `OUT/cells/<fit>/<subject>/run` and is evaluated into `…/eval-<method>`. Finished fits and
//! evaluations are skipped, interrupted fits resume from their checkpoint. `--shard i/n` runs
//! only its share of the units (dealt by the methods' stated costs, round-robin without them),
//! so a Slurm job array or a Kubernetes indexed Job spreads the table over machines;
//! `--collect` then merges every cell's scores into the table.
//! A cell whose run was trained with other settings than the manifest now gives (a changed
//! learning rate, say) is refused by both, naming the settings, rather than silently reused;
//! so are all cells when a model's bytes changed at the same path (`OUT/inputs.json` holds the
//! fingerprints of the first run, and every table records them for `trainer merge-tables`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use super::dreambench::DreamBench;
use super::fingerprint;
use super::gallery::slug;
use super::protocol::{EvalSettings, ScoreRecord};
use super::table::{aggregate, read_scores, write_tables, Comparisons};
use crate::checkpoint::LoadOptions;
use crate::fit::config::FitConfig;
use crate::fit::runner::{run, RunOptions, RunOutcome};

/// One row family of the table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MethodEntry {
    /// The row label, e.g. "EchoDistill" or "w/o discriminators".
    pub label: String,
    /// `trainer fit` overrides (`key=value`) on top of the manifest's `fit` list.
    #[serde(default)]
    pub set: Vec<String>,
    /// Evaluate the run of another entry (by label) instead of training one.
    #[serde(default)]
    pub reuse: Option<String>,
    /// Step counts to evaluate.
    #[serde(default = "default_steps")]
    pub steps: Vec<usize>,
    /// Evaluate the run's teacher (DDIM with guidance) instead of its student.
    #[serde(default)]
    pub teacher: bool,
    /// What one fit of this entry costs, with the evaluations that read it, relative to the
    /// other entries (any unit: seconds on some machine, say); default 1. Used only to deal
    /// the units evenly to `--shard`s; only training entries take one.
    #[serde(default)]
    pub cost: Option<f64>,
}

fn default_steps() -> Vec<usize> {
    vec![1]
}

/// The evaluation protocol of every cell.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// A transformers CLIPModel folder.
    pub clip: PathBuf,
    /// A DINO (ViT) or DINOv2 folder.
    pub dino: PathBuf,
    /// DINO input side (default: its config's).
    #[serde(default)]
    pub dino_size: Option<i64>,
    /// Seeds per prompt.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Only the first N prompts (default: all 25).
    #[serde(default)]
    pub prompts: Option<usize>,
}

fn default_seeds() -> Vec<u64> {
    vec![0, 1, 2, 3]
}

/// `table.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The DreamBench folder (photos, classes and prompt lists).
    pub dataset: PathBuf,
    /// Subjects (default: all of the dataset's).
    #[serde(default)]
    pub subjects: Vec<String>,
    /// The modifier token.
    #[serde(default = "default_token")]
    pub token: String,
    /// A `trainer fit` config file every run starts from (before the `fit` overrides).
    #[serde(default)]
    pub fit_config: Option<PathBuf>,
    /// `trainer fit` overrides for every run (models, towers, iterations, device...).
    #[serde(default)]
    pub fit: Vec<String>,
    /// The evaluation protocol.
    pub eval: EvalSection,
    /// The rows.
    pub methods: Vec<MethodEntry>,
}

fn default_token() -> String {
    "<new1>".into()
}

/// The file in a bench-table folder that records its inputs' fingerprints ([`Manifest::inputs`]).
pub const INPUTS_FILE: &str = "inputs.json";

/// What to do when the inputs of a bench-table folder changed.
const INPUTS_CHANGED: &str = "its cells were trained and scored on the old ones. Use a new --out for the new inputs (or restore the old ones)";

/// The `trainer fit` keys whose values are paths.
pub const PATH_KEYS: [&str; 4] = ["student", "teacher", "towers", "baseline.class_data_dir"];

/// `key=value` with a [`PATH_KEYS`] key and a relative value that exists under `base`, as
/// `key=base/value`; any other override unchanged.
fn resolve_override(o: &str, base: &Path) -> String {
    if let Some((key, value)) = o.split_once('=') {
        let (key, value) = (key.trim(), value.trim());
        let path = Path::new(value);
        if PATH_KEYS.contains(&key) && path.is_relative() && base.join(path).exists() {
            return format!("{key}={}", base.join(path).display());
        }
    }
    o.to_string()
}

/// One training run and the evaluations that read it.
#[derive(Debug, Clone)]
pub struct Unit {
    /// Index in the plan (what sharding divides).
    pub index: usize,
    /// The entry that trains (its label's slug names the folder).
    pub fit: usize,
    /// The subject.
    pub subject: String,
    /// The entries evaluated on this run.
    pub evals: Vec<usize>,
}

/// `i/n`: this process runs the `i`-th of `n` shares of the units (0-based, as Slurm's
/// `SLURM_ARRAY_TASK_ID` and Kubernetes' `JOB_COMPLETION_INDEX`); see [`Manifest::deal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, 0-based.
    pub index: usize,
    /// How many shards.
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("--shard {s:?}: expected INDEX/COUNT, e.g. 0/4"))?;
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| format!("--shard {s:?}: bad index"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("--shard {s:?}: bad count"))?;
        if count == 0 || index >= count {
            return Err(format!(
                "--shard {s:?}: the index must be below the count (0-based: 0/{count} .. {}/{count})",
                count.saturating_sub(1)
            ));
        }
        Ok(Self { index, count })
    }
}

impl Manifest {
    /// Reads and checks a manifest; relative paths are taken from the manifest's folder: the
    /// dataset and the backbones always, and the models of `fit` and `set` overrides
    /// ([`PATH_KEYS`]) when that names an existing path (otherwise the value stays as written:
    /// a Hugging Face repo id such as `stabilityai/sd-turbo`, or a folder under the working
    /// directory).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the manifest {}", path.display()))?;
        let mut m: Manifest = serde_yaml::from_str(&text)
            .with_context(|| format!("{}: not a valid bench-table manifest", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut m.dataset, &mut m.eval.clip, &mut m.eval.dino]
            .into_iter()
            .chain(m.fit_config.as_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for o in m
            .fit
            .iter_mut()
            .chain(m.methods.iter_mut().flat_map(|x| x.set.iter_mut()))
        {
            *o = resolve_override(o, base);
        }
        m.check().with_context(|| path.display().to_string())?;
        Ok(m)
    }

    /// The table's models by role, as [`fingerprint::fingerprints`] reads them: `clip`,
    /// `dino`, every path of the `fit` overrides under its key (`student`, `teacher`,
    /// `towers`, ...) and of a method's `set` overrides as `<label>: <key>`.
    pub fn inputs(&self) -> Vec<(String, PathBuf)> {
        let mut named = vec![
            ("clip".to_string(), self.eval.clip.clone()),
            ("dino".to_string(), self.eval.dino.clone()),
        ];
        let paths = |o: &String| {
            o.split_once('=')
                .filter(|(k, _)| PATH_KEYS.contains(&k.trim()))
                .map(|(k, v)| (k.trim().to_string(), PathBuf::from(v.trim())))
        };
        named.extend(self.fit.iter().filter_map(paths));
        for m in &self.methods {
            named.extend(
                m.set
                    .iter()
                    .filter_map(paths)
                    .map(|(k, v)| (format!("{}: {k}", m.label), v)),
            );
        }
        named
    }

    /// Fingerprints the table's [inputs](Self::inputs) and checks them against those the folder
    /// `out` recorded on its first run (recording them there when it has none): a table's cells
    /// are never trained or scored on other bytes at the same paths.
    pub fn check_inputs(&self, out: &Path) -> Result<BTreeMap<String, String>> {
        let inputs = fingerprint::fingerprints(&self.inputs())?;
        fingerprint::check_or_record(&out.join(INPUTS_FILE), &inputs, INPUTS_CHANGED)?;
        Ok(inputs)
    }

    fn check(&self) -> Result<()> {
        ensure!(!self.methods.is_empty(), "methods: list at least one");
        let mut labels = BTreeSet::new();
        let mut slugs = BTreeSet::new();
        for m in &self.methods {
            ensure!(
                labels.insert(m.label.as_str()),
                "methods: label {:?} appears twice",
                m.label
            );
            ensure!(
                slugs.insert(slug(&m.label)),
                "methods: {:?} has the same folder name as another label",
                m.label
            );
            ensure!(
                !m.steps.is_empty() && !m.steps.contains(&0),
                "methods: {:?} needs step counts of at least 1",
                m.label
            );
        }
        for m in &self.methods {
            if let Some(r) = &m.reuse {
                let target = self
                    .methods
                    .iter()
                    .find(|x| &x.label == r)
                    .with_context(|| {
                        format!("methods: {:?} reuses unknown label {r:?}", m.label)
                    })?;
                ensure!(
                    target.reuse.is_none() && m.set.is_empty(),
                    "methods: {:?} reuses {r:?}: reuse a training entry, and give `set` only there",
                    m.label
                );
                ensure!(
                    m.cost.is_none(),
                    "methods: {:?} reuses {r:?}: give `cost` only there (it covers the evaluations that reuse its run)",
                    m.label
                );
            }
            if let Some(c) = m.cost {
                ensure!(
                    c.is_finite() && c > 0.0,
                    "methods: {:?} has cost {c}: give a positive number",
                    m.label
                );
            }
        }
        Ok(())
    }

    /// The units `shard` runs (every unit without one), in plan order. The units are dealt by
    /// longest-processing-time first: heaviest cost first (plan order among equals), each to
    /// the shard with the least cost so far (the lowest index among equals). Every shard
    /// computes the same dealing from the manifest alone, so the shares are disjoint and cover
    /// the plan; with no costs given this is round-robin, unit `k` to shard `k mod n`.
    pub fn deal<'a>(&self, units: &'a [Unit], shard: Option<Shard>) -> Vec<&'a Unit> {
        let Some(shard) = shard else {
            return units.iter().collect();
        };
        let mut heaviest: Vec<&Unit> = units.iter().collect();
        heaviest.sort_by(|a, b| {
            self.unit_cost(b)
                .total_cmp(&self.unit_cost(a))
                .then(a.index.cmp(&b.index))
        });
        let mut load = vec![0.0; shard.count];
        let mut owner = BTreeMap::new();
        for u in heaviest {
            let lightest = (0..shard.count)
                .reduce(|best, i| if load[i] < load[best] { i } else { best })
                .unwrap_or(0);
            load[lightest] += self.unit_cost(u);
            owner.insert(u.index, lightest);
        }
        units
            .iter()
            .filter(|u| owner.get(&u.index) == Some(&shard.index))
            .collect()
    }

    /// What `unit` costs: its training entry's [`MethodEntry::cost`], 1 when not given.
    fn unit_cost(&self, unit: &Unit) -> f64 {
        self.methods[unit.fit].cost.unwrap_or(1.0)
    }

    /// The sum of `units`' costs.
    pub fn cost<'a>(&self, units: impl IntoIterator<Item = &'a Unit>) -> f64 {
        units.into_iter().map(|u| self.unit_cost(u)).sum()
    }

    /// A smaller or adjusted table from the command line: other subjects, `fit` overrides
    /// appended, fewer prompts, other seeds (empty and `None` keep the manifest's).
    pub fn narrow(
        &mut self,
        subjects: &[String],
        fit: &[String],
        prompts: Option<usize>,
        seeds: &[u64],
    ) {
        if !subjects.is_empty() {
            self.subjects = subjects.to_vec();
        }
        self.fit.extend(fit.iter().cloned());
        if prompts.is_some() {
            self.eval.prompts = prompts;
        }
        if !seeds.is_empty() {
            self.eval.seeds = seeds.to_vec();
        }
    }

    /// The subjects, checked against the dataset.
    pub fn subjects(&self, bench: &DreamBench) -> Result<Vec<String>> {
        if self.subjects.is_empty() {
            return Ok(bench.subjects.iter().map(|s| s.name.clone()).collect());
        }
        for s in &self.subjects {
            bench.subject(s)?;
        }
        Ok(self.subjects.clone())
    }

    /// Every unit, in a fixed order (subjects outer, training entries inner).
    pub fn plan(&self, subjects: &[String]) -> Vec<Unit> {
        let mut units = Vec::new();
        for subject in subjects {
            for (i, m) in self.methods.iter().enumerate() {
                if m.reuse.is_some() {
                    continue;
                }
                let evals = self
                    .methods
                    .iter()
                    .enumerate()
                    .filter(|(j, x)| *j == i || x.reuse.as_deref() == Some(m.label.as_str()))
                    .map(|(j, _)| j)
                    .collect();
                units.push(Unit {
                    index: units.len(),
                    fit: i,
                    subject: subject.clone(),
                    evals,
                });
            }
        }
        units
    }

    /// The fit settings of a unit.
    pub fn fit_config(&self, bench: &DreamBench, unit: &Unit) -> Result<FitConfig> {
        let subject = bench.subject(&unit.subject)?;
        // One-token initializer: the class, or its last word ("stuffed animal" -> "animal").
        let init = subject
            .class
            .split_whitespace()
            .last()
            .unwrap_or(&subject.class)
            .to_string();
        let mut o = self.fit.clone();
        o.extend(self.methods[unit.fit].set.iter().cloned());
        o.push(format!(
            "concepts=[{{images: {:?}, token: {:?}, class: {:?}, init_word: {:?}}}]",
            bench.folder(subject).display().to_string(),
            self.token,
            subject.class,
            init
        ));
        FitConfig::load(self.fit_config.as_deref(), &o).with_context(|| {
            format!(
                "the fit settings of {:?} on {}",
                self.methods[unit.fit].label, unit.subject
            )
        })
    }

    /// The evaluation settings of entry `method` on `subject`.
    pub fn eval_settings(&self, method: usize, subject: &str, quiet: bool) -> EvalSettings {
        let m = &self.methods[method];
        EvalSettings {
            dataset: self.dataset.clone(),
            subject: Some(subject.to_string()),
            references: None,
            label: Some(m.label.clone()),
            teacher: m.teacher,
            steps: m.steps.clone(),
            seeds: self.eval.seeds.clone(),
            prompts: self.eval.prompts,
            scheduler: None,
            guidance: None,
            resolution: None,
            clip: self.eval.clip.clone(),
            dino: self.eval.dino.clone(),
            dino_size: self.eval.dino_size,
            quiet,
        }
    }
}

/// `OUT/cells/<fit>/<subject>`.
pub fn unit_dir(out: &Path, m: &Manifest, unit: &Unit) -> PathBuf {
    out.join("cells")
        .join(slug(&m.methods[unit.fit].label))
        .join(&unit.subject)
}

/// Where entry `method`'s evaluation of a unit goes.
pub fn eval_dir(out: &Path, m: &Manifest, unit: &Unit, method: usize) -> PathBuf {
    unit_dir(out, m, unit).join(format!("eval-{}", slug(&m.methods[method].label)))
}

/// Settings that change how a fit runs but not what it trains: a cell trained with other
/// values of these is still the manifest's cell.
const OPERATIONAL_KEYS: [&str; 4] = [
    "device",
    "save_every",
    "checkpoint_decoder",
    "checkpoint_unet",
];

/// The dotted keys (and both values) where two resolved fit settings differ.
fn differing_keys(
    prefix: &str,
    was: &serde_yaml::Value,
    now: &serde_yaml::Value,
    out: &mut Vec<String>,
) {
    use serde_yaml::Value;
    match (was, now) {
        (Value::Mapping(a), Value::Mapping(b)) => {
            let keys: BTreeSet<String> = a
                .keys()
                .chain(b.keys())
                .map(|k| k.as_str().map_or_else(|| format!("{k:?}"), str::to_string))
                .collect();
            for k in keys {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if OPERATIONAL_KEYS.contains(&key.as_str()) {
                    continue;
                }
                let null = Value::Null;
                differing_keys(
                    &key,
                    a.get(k.as_str()).unwrap_or(&null),
                    b.get(k.as_str()).unwrap_or(&null),
                    out,
                );
            }
        }
        (a, b) if a != b => {
            let show = |v: &Value| serde_json::to_string(v).unwrap_or_default();
            out.push(format!("{prefix}: {} -> {}", show(a), show(b)));
        }
        _ => {}
    }
}

/// Refuses when any of `units` has a run trained (or begun) with settings other than the
/// manifest's: its fit and evaluations would otherwise be reused as if they were the new
/// settings'. Names every such cell and key, and what to remove to refit them.
fn refuse_stale_cells(
    manifest: &Manifest,
    bench: &DreamBench,
    out: &Path,
    units: &[&Unit],
) -> Result<()> {
    let settings = |c: FitConfig| -> Result<serde_yaml::Value> {
        let baseline = c.method.is_baseline();
        let mut v = serde_yaml::to_value(c)?;
        // EchoDistill reads none of the baselines' settings (whose defaults it resolves all the
        // same): a change there is no reason to refit it.
        if let (false, Some(m)) = (baseline, v.as_mapping_mut()) {
            m.remove("baseline");
        }
        Ok(v)
    };
    let mut stale = Vec::new();
    for unit in units {
        let dir = unit_dir(out, manifest, unit);
        let run_dir = dir.join("run");
        if !run_dir.join("config.yaml").is_file() {
            continue;
        }
        let was = settings(crate::fit::run_dir::run_config(&run_dir)?)?;
        let now = settings(manifest.fit_config(bench, unit)?)?;
        let mut keys = Vec::new();
        differing_keys("", &was, &now, &mut keys);
        if !keys.is_empty() {
            stale.push(format!("{} ({})", dir.display(), keys.join("; ")));
        }
    }
    ensure!(
        stale.is_empty(),
        "{} cell(s) were trained with other settings than the manifest now gives: {}. Remove those folders to train and evaluate them again with the new settings (or restore the old manifest)",
        stale.len(),
        stale.join(", ")
    );
    Ok(())
}

/// Runs the units of `shard` (all without one): fits and evaluations not finished yet.
/// `log` receives one line per step.
pub fn run_units(
    manifest: &Manifest,
    out: &Path,
    shard: Option<Shard>,
    opts: LoadOptions,
    quiet: bool,
    log: &mut dyn FnMut(String),
) -> Result<()> {
    let bench = DreamBench::open(&manifest.dataset)?;
    let subjects = manifest.subjects(&bench)?;
    let units = manifest.plan(&subjects);
    let mine = manifest.deal(&units, shard);
    if let Some(s) = shard {
        log(format!(
            "shard {}/{}: {} of {} units, cost {} of {}",
            s.index,
            s.count,
            mine.len(),
            units.len(),
            manifest.cost(mine.iter().copied()),
            manifest.cost(&units)
        ));
    }
    refuse_stale_cells(manifest, &bench, out, &mine)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    manifest.check_inputs(out)?;
    for (k, unit) in mine.iter().enumerate() {
        let dir = unit_dir(out, manifest, unit);
        let run_dir = dir.join("run");
        let label = &manifest.methods[unit.fit].label;
        let head = format!("[{}/{}] {label} on {}", k + 1, mine.len(), unit.subject);
        if crate::fit::run_dir::is_finished(&run_dir) {
            log(format!("{head}: trained already"));
        } else {
            let resume = run_dir.join("checkpoint").join("state.json").is_file();
            log(format!(
                "{head}: {}",
                if resume {
                    "resuming the fit"
                } else {
                    "fitting"
                }
            ));
            let config = manifest.fit_config(&bench, unit)?;
            let options = RunOptions {
                resume,
                quiet,
                ..RunOptions::default()
            };
            match run(config, &run_dir, &options)? {
                RunOutcome::Finished => {}
                RunOutcome::Interrupted(n) => bail!(
                    "{head}: the fit stopped after {n} iterations; run bench-table again to resume"
                ),
            }
        }
        for &e in &unit.evals {
            let edir = eval_dir(out, manifest, unit, e);
            if edir.join("metrics.json").is_file() && edir.join("scores.jsonl").is_file() {
                log(format!(
                    "{head}: {} evaluated already",
                    manifest.methods[e].label
                ));
                continue;
            }
            log(format!("{head}: evaluating {}", manifest.methods[e].label));
            let settings = manifest.eval_settings(e, &unit.subject, quiet);
            super::evaluate_into(&run_dir, &settings, &edir, opts)?;
        }
    }
    Ok(())
}

/// Merges every cell's scores into `OUT/metrics.{csv,json,md,png}` (and `paired.png`); refuses
/// while any cell is unfinished, naming them. Returns the rows and every row against the
/// manifest's first, subject by subject.
pub fn collect(
    manifest: &Manifest,
    out: &Path,
) -> Result<(Vec<super::table::TableRow>, Option<super::paired::Paired>)> {
    let bench = DreamBench::open(&manifest.dataset)?;
    let subjects = manifest.subjects(&bench)?;
    let units = manifest.plan(&subjects);
    refuse_stale_cells(manifest, &bench, out, &units.iter().collect::<Vec<_>>())?;
    let mut records: Vec<ScoreRecord> = Vec::new();
    let mut missing = Vec::new();
    // Rows in manifest order, whatever order the units ran in.
    for (e, m) in manifest.methods.iter().enumerate() {
        for unit in units.iter().filter(|u| u.evals.contains(&e)) {
            let path = eval_dir(out, manifest, unit, e).join("scores.jsonl");
            if path.is_file() {
                records.extend(read_scores(&path)?);
            } else {
                missing.push(format!(
                    "{} on {} (unit {})",
                    m.label, unit.subject, unit.index
                ));
            }
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} of the table's cells are not finished: {}. Run the remaining shards (or bench-table without --shard) first",
            missing.len(),
            missing.join(", ")
        );
    }
    let inputs = manifest.check_inputs(out)?;
    let rows = aggregate(&records);
    let (prompts, seeds) = super::count_prompts_and_seeds(&records);
    let meta = serde_json::json!({
        "manifest": manifest,
        "inputs": inputs,
        "subjects": subjects,
        "prompts_per_subject": prompts,
        "seeds": seeds,
    });
    let note = format!(
        "{} subjects; {}",
        subjects.len(),
        super::backbone_note(&manifest.eval.clip, &manifest.eval.dino, prompts, &seeds)
    );
    // The manifest's first method is the one the others are compared with.
    let (paired, _) = write_tables(
        &rows,
        out,
        meta,
        &[note],
        "DreamBench table",
        Comparisons::default(),
    )?;
    Ok((rows, paired))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        serde_yaml::from_str(
            "dataset: d\neval: {clip: c, dino: e}\nmethods:\n  - label: EchoDistill\n  - label: EchoDistill teacher\n    reuse: EchoDistill\n    teacher: true\n    steps: [25]\n  - label: w/o discriminators\n    set: ['discriminators=[]']\n",
        )
        .unwrap()
    }

    #[test]
    fn shards_parse_zero_based() {
        assert_eq!("1/3".parse::<Shard>(), Ok(Shard { index: 1, count: 3 }));
        assert!("3/3"
            .parse::<Shard>()
            .unwrap_err()
            .contains("below the count"));
        assert!("x".parse::<Shard>().is_err());
    }

    #[test]
    fn plan_trains_once_per_fit_and_subject_and_shards_cover_it() {
        let m = manifest();
        m.check().unwrap();
        let units = m.plan(&["dog".into(), "can".into()]);
        assert_eq!(units.len(), 4);
        assert_eq!(units[0].evals, [0, 1]);
        assert_eq!(units[1].evals, [2]);
        let mut seen: Vec<usize> = (0..3)
            .flat_map(|i| {
                let s = Shard { index: i, count: 3 };
                m.deal(&units, Some(s)).into_iter().map(|u| u.index)
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2, 3]);
        assert_eq!(m.deal(&units, None).len(), 4);
    }

    fn dealt(m: &Manifest, units: &[Unit], count: usize) -> Vec<Vec<usize>> {
        (0..count)
            .map(|index| {
                let share = m.deal(units, Some(Shard { index, count }));
                share.into_iter().map(|u| u.index).collect()
            })
            .collect()
    }

    /// Without costs the units go round-robin (what `--shard` did before costs existed, so
    /// half-run tables keep their shares); with costs the heaviest go first, each to the
    /// lightest shard.
    #[test]
    fn shards_are_dealt_round_robin_or_by_cost() {
        let mut m = manifest();
        let units = m.plan(&["dog".into(), "can".into(), "cat".into()]);
        for count in 1..=4 {
            let round_robin: Vec<Vec<usize>> = (0..count)
                .map(|i| (0..units.len()).filter(|k| k % count == i).collect())
                .collect();
            assert_eq!(dealt(&m, &units, count), round_robin, "{count} shards");
        }
        // Units alternate EchoDistill (cost 3) and w/o discriminators (1) over three subjects:
        // 3,1,3,1,3,1. Heaviest first: 0 -> s0, 2 -> s1, 4 -> s0 (3 = 3, lower index); then the
        // 1s: 1 -> s1 (3 < 6), 3 -> s1 (4 < 6), 5 -> s1 (5 < 6). Round-robin would give s0 all
        // three 3s.
        m.methods[0].cost = Some(3.0);
        m.methods[2].cost = Some(1.0);
        m.check().unwrap();
        assert_eq!(dealt(&m, &units, 2), [vec![0, 4], vec![1, 2, 3, 5]]);
        assert_eq!(
            m.cost(m.deal(&units, Some(Shard { index: 1, count: 2 }))),
            6.0
        );
    }

    #[test]
    fn costs_are_positive_and_only_on_training_entries() {
        let mut m = manifest();
        m.methods[1].cost = Some(2.0);
        let e = m.check().unwrap_err().to_string();
        assert!(
            e.contains("EchoDistill teacher") && e.contains("cost"),
            "{e}"
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let mut m = manifest();
            m.methods[0].cost = Some(bad);
            let e = m.check().unwrap_err().to_string();
            assert!(e.contains("positive"), "{bad}: {e}");
        }
    }

    /// The committed toy manifest states a cost for every fit, and two shards of one subject
    /// get nearly the same work (round-robin gave one shard 1.4 times the other's).
    #[test]
    fn the_toy_manifest_deals_one_subject_evenly_to_two_shards() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/toy/bench-table.yaml");
        let m = Manifest::load(&path).unwrap();
        let units = m.plan(&["badge_01".into()]);
        assert!(units.iter().all(|u| m.methods[u.fit].cost.is_some()));
        let loads: Vec<f64> = (0..2)
            .map(|index| m.cost(m.deal(&units, Some(Shard { index, count: 2 }))))
            .collect();
        assert_eq!(loads[0] + loads[1], m.cost(&units));
        let (lo, hi) = (loads[0].min(loads[1]), loads[0].max(loads[1]));
        assert!(hi / lo < 1.05, "{loads:?}");
    }

    #[test]
    fn bad_manifests_are_refused() {
        let mut m = manifest();
        m.methods[1].reuse = Some("nobody".into());
        assert!(m.check().unwrap_err().to_string().contains("nobody"));
        let mut m = manifest();
        m.methods[2].label = "EchoDistill".into();
        assert!(m.check().unwrap_err().to_string().contains("twice"));
    }

    /// Nested keys are named by their dotted path with both values; operational keys are not
    /// differences.
    #[test]
    fn differing_keys_name_the_changed_settings() {
        let was: serde_yaml::Value =
            serde_yaml::from_str("a: 1\nsave_every: 5\nb: {c: x, d: [1, 2]}\n").unwrap();
        let now: serde_yaml::Value =
            serde_yaml::from_str("a: 1\nsave_every: 9\nb: {c: y, d: [1, 3], e: true}\n").unwrap();
        let mut keys = Vec::new();
        differing_keys("", &was, &now, &mut keys);
        assert_eq!(
            keys,
            [
                r#"b.c: "x" -> "y""#,
                "b.d: [1,2] -> [1,3]",
                "b.e: null -> true"
            ]
        );
        keys.clear();
        differing_keys("", &was, &was, &mut keys);
        assert!(keys.is_empty());
    }

    /// Model paths in overrides are read from the manifest's folder when they exist there;
    /// repo ids, other keys and absolute paths stay as written.
    #[test]
    fn override_paths_resolve_from_the_manifest_folder() {
        let base = std::env::temp_dir().join(format!("bench-table-paths-{}", std::process::id()));
        std::fs::create_dir_all(base.join("models/student")).unwrap();
        let shown = |p: &str| base.join(p).display().to_string();
        assert_eq!(
            resolve_override("student=models/student", &base),
            format!("student={}", shown("models/student"))
        );
        assert_eq!(
            resolve_override("teacher=stabilityai/stable-diffusion-2-1", &base),
            "teacher=stabilityai/stable-diffusion-2-1"
        );
        assert_eq!(resolve_override("iterations=10", &base), "iterations=10");
        assert_eq!(
            resolve_override("concepts=models/student", &base),
            "concepts=models/student"
        );
        assert_eq!(resolve_override("towers=/abs/t", &base), "towers=/abs/t");
        std::fs::remove_dir_all(&base).unwrap();
    }
}

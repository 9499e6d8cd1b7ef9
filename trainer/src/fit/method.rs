//! What the runner ([`super::runner`]) drives: EchoDistill ([`super::distill::Distiller`]) or
//! a baseline ([`super::baseline::Baseline`]). Both share the data pipeline, the run folder's
//! log, checkpoints, resume, divergence recovery, grids and report; they differ in what trains
//! and how one iteration goes.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::config::FitConfig;
use super::distill::{Distiller, StepLog};
use super::{grids, outputs};

/// One training method, as the runner sees it.
pub trait Method {
    /// The run's settings.
    fn config(&self) -> &FitConfig;
    /// "<token> <class>" of each concept.
    fn subjects(&self) -> &[String];
    /// Iterations done so far.
    fn iteration(&self) -> usize;
    /// Work due before the next iteration (the echo stage's samples, a baseline's class
    /// images), as a message for the progress bar; `None` when there is none.
    fn pending(&self) -> Option<&'static str>;
    /// Does the pending work (writing what it makes into the run folder).
    fn prepare(&mut self, run: &Path) -> Result<()>;
    /// One iteration on the next batch.
    fn step(&mut self) -> Result<StepLog>;
    /// Makes iteration `iteration` produce a NaN loss once (a failpoint for tests).
    fn poison_iteration(&mut self, iteration: usize);
    /// The learning rates now, by name (logged as `lr_<name>`).
    fn learning_rates(&self) -> Vec<(&'static str, f64)>;
    /// The factor every learning rate is multiplied by (lowered by divergence recovery).
    fn lr_scale(&self) -> f64;
    /// Divergence recoveries so far.
    fn recoveries(&self) -> usize;
    /// Puts back a learning-rate factor and recovery count (after restoring a checkpoint that
    /// predates them).
    fn restore_recovery_state(&mut self, lr_scale: f64, recoveries: usize);
    /// Multiplies every learning rate by `factor` and counts a recovery.
    fn lower_learning_rates(&mut self, factor: f64) {
        let (scale, done) = (self.lr_scale() * factor, self.recoveries() + 1);
        self.restore_recovery_state(scale, done);
    }
    /// Writes `run/checkpoint/`; `pause` is called at named points (failpoints).
    fn save_checkpoint(&mut self, run: &Path, pause: &dyn Fn(&str)) -> Result<()>;
    /// Restores `run/checkpoint/`.
    fn load_checkpoint(&mut self, run: &Path) -> Result<()>;
    /// Where the progress grid after `iteration` goes.
    fn grid_path(&self, run: &Path, iteration: usize) -> PathBuf;
    /// Draws and writes the progress grid after `iteration`.
    fn write_grid(&self, run: &Path, iteration: usize) -> Result<()>;
    /// Draws and writes the grids that only the end gets (the teacher's).
    fn write_final_grids(&self, run: &Path) -> Result<()>;
    /// Writes the results (trained weights, tokenizer, exports) into `run`.
    fn save_outputs(&self, run: &Path) -> Result<()>;
    /// The report's title and the rows naming its models.
    fn report_heading(&self) -> (String, Vec<(String, String)>);
}

impl Method for Distiller {
    fn config(&self) -> &FitConfig {
        Distiller::config(self)
    }
    fn subjects(&self) -> &[String] {
        Distiller::subjects(self)
    }
    fn iteration(&self) -> usize {
        Distiller::iteration(self)
    }
    fn pending(&self) -> Option<&'static str> {
        let echo = self.config().stage_after(self.iteration()) == super::config::Stage::Echo;
        (echo && !self.in_echo_stage()).then_some("echo: sampling the student")
    }
    fn prepare(&mut self, run: &Path) -> Result<()> {
        self.generate_echo(run)
    }
    fn step(&mut self) -> Result<StepLog> {
        Distiller::step(self)
    }
    fn poison_iteration(&mut self, iteration: usize) {
        Distiller::poison_iteration(self, iteration)
    }
    fn learning_rates(&self) -> Vec<(&'static str, f64)> {
        self.named_learning_rates()
    }
    fn lr_scale(&self) -> f64 {
        Distiller::lr_scale(self)
    }
    fn recoveries(&self) -> usize {
        Distiller::recoveries(self)
    }
    fn restore_recovery_state(&mut self, lr_scale: f64, recoveries: usize) {
        Distiller::restore_recovery_state(self, lr_scale, recoveries)
    }
    fn save_checkpoint(&mut self, run: &Path, pause: &dyn Fn(&str)) -> Result<()> {
        Distiller::save_checkpoint(self, run, pause)
    }
    fn load_checkpoint(&mut self, run: &Path) -> Result<()> {
        Distiller::load_checkpoint(self, run)
    }
    fn grid_path(&self, run: &Path, iteration: usize) -> PathBuf {
        grids::student_path(run, iteration)
    }
    fn write_grid(&self, run: &Path, iteration: usize) -> Result<()> {
        grids::write_student_grid(self, run, iteration).map(|_| ())
    }
    fn write_final_grids(&self, run: &Path) -> Result<()> {
        grids::write_teacher_grid(self, run).map(|_| ())
    }
    fn save_outputs(&self, run: &Path) -> Result<()> {
        outputs::save(self, run)
    }
    fn report_heading(&self) -> (String, Vec<(String, String)>) {
        let c = Distiller::config(self);
        (
            format!("EchoDistill run: {}", Distiller::subjects(self).join(", ")),
            vec![
                ("student".into(), c.student.clone()),
                (
                    "teacher".into(),
                    if c.ablation.teacher {
                        c.teacher.clone()
                    } else {
                        "none (ablation)".into()
                    },
                ),
            ],
        )
    }
}

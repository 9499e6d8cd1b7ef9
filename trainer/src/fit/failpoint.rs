//! Failpoints: faults a run can be started with (the hidden `--failpoint` flag) so that the test
//! suite can prove the recovery paths on the real binary: a NaN loss at a chosen iteration, or a
//! pause inside a checkpoint write where the test kills the process with SIGKILL.

use std::io::Write;
use std::str::FromStr;

use anyhow::{bail, Context, Result};

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failpoint {
    /// `nan@K`: iteration K's loss becomes NaN (once).
    Nan(usize),
    /// `pause-checkpoint-write@K` / `pause-checkpoint-swap@K`: the checkpoint written after
    /// iteration K stops at that point (`write`: the new state half written; `swap`: the old
    /// checkpoint moved aside, the new one not yet in place) and waits to be killed.
    PauseCheckpoint {
        /// `write` or `swap`.
        point: String,
        /// The iteration whose checkpoint pauses.
        iteration: usize,
    },
}

impl FromStr for Failpoint {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (name, at) = s
            .split_once('@')
            .with_context(|| format!("failpoint {s:?}: expected NAME@ITERATION"))?;
        let iteration: usize = at
            .parse()
            .with_context(|| format!("failpoint {s:?}: {at:?} is not an iteration"))?;
        Ok(match name {
            "nan" => Failpoint::Nan(iteration),
            "pause-checkpoint-write" => Failpoint::PauseCheckpoint {
                point: "write".into(),
                iteration,
            },
            "pause-checkpoint-swap" => Failpoint::PauseCheckpoint {
                point: "swap".into(),
                iteration,
            },
            other => bail!(
                "unknown failpoint {other:?} (nan, pause-checkpoint-write, pause-checkpoint-swap)"
            ),
        })
    }
}

/// Blocks forever if `failpoints` ask to pause at `point` of iteration `iteration`'s checkpoint,
/// after saying so on stderr (the test waits for that line, then kills the process).
pub fn maybe_pause(failpoints: &[Failpoint], point: &str, iteration: usize) {
    let hit = failpoints.iter().any(|f| {
        matches!(f, Failpoint::PauseCheckpoint { point: p, iteration: i } if p == point && *i == iteration)
    });
    if hit {
        eprintln!("failpoint: paused in checkpoint {point} at iteration {iteration}");
        let _ = std::io::stderr().flush();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!("nan@3".parse::<Failpoint>().unwrap(), Failpoint::Nan(3));
        assert_eq!(
            "pause-checkpoint-swap@2".parse::<Failpoint>().unwrap(),
            Failpoint::PauseCheckpoint {
                point: "swap".into(),
                iteration: 2
            }
        );
        assert!("nan".parse::<Failpoint>().is_err());
        assert!("boom@1".parse::<Failpoint>().is_err());
    }
}

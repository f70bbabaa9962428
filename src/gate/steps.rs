//! The step runner of `start`: each step is named (a failure says where it
//! stopped), timed (`--timings`), and registers what undoes it before it
//! runs, so a step that fails half-way is undone too. Rollback runs the
//! registered undos in reverse: no second, hand-written list to keep in
//! step with the steps.

use std::future::Future;

use crate::error::Error;
use crate::timings::{timed, Timings};

/// What undoes a step of `start`. Each undo is idempotent: it removes what
/// exists of its part and treats "already gone" as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// Delete the gate netns.
    Netns,
    /// Delete the agent's netns, which this start created for it.
    AgentNetns,
    /// Delete the gate's links: both veth pairs, wherever their ends are.
    Links,
    /// Remove the gate's allowlist from the host table.
    HostRules,
    /// Stop the gate's socket and forwarder units.
    Units,
}

/// A step that failed, and the error.
#[derive(Debug)]
pub struct StepError {
    /// The step's name.
    pub step: &'static str,
    /// Why it failed.
    pub error: Error,
}

/// Runs the steps of one `start`.
pub struct Steps<'t> {
    timings: &'t mut Timings,
    undos: Vec<Undo>,
}

impl<'t> Steps<'t> {
    /// A runner recording each step's duration into `timings`.
    pub fn new(timings: &'t mut Timings) -> Steps<'t> {
        Steps {
            timings,
            undos: Vec::new(),
        }
    }

    /// Runs step `step`, first registering `undo` if it creates something.
    pub async fn run<T>(
        &mut self,
        step: &'static str,
        undo: Option<Undo>,
        work: impl Future<Output = crate::Result<T>>,
    ) -> Result<T, StepError> {
        self.undos.extend(undo);
        let out = work.await.map_err(|error| StepError { step, error })?;
        self.timings.mark(step);
        Ok(out)
    }

    /// Runs two parts of step `step` at the same time (both mostly wait),
    /// registering both undos first. The first part that failed is the
    /// error; `--timings` shows each part's own duration.
    pub async fn run_both<A, B>(
        &mut self,
        step: &'static str,
        first: Part<impl Future<Output = crate::Result<A>>>,
        second: Part<impl Future<Output = crate::Result<B>>>,
    ) -> Result<(A, B), StepError> {
        self.undos.extend(first.undo.into_iter().chain(second.undo));
        let ((a, a_took), (b, b_took)) = tokio::join!(timed(first.work), timed(second.work));
        let failed = |part: &'static str| move |error| StepError { step: part, error };
        let a = a.map_err(failed(first.name))?;
        let b = b.map_err(failed(second.name))?;
        self.timings
            .mark_parallel(step, &[(first.name, a_took), (second.name, b_took)]);
        Ok((a, b))
    }

    /// The registered undos, last first: the order to roll back in.
    pub fn into_undos(self) -> Vec<Undo> {
        let mut undos = self.undos;
        undos.reverse();
        undos
    }
}

/// One part of a step run by [`Steps::run_both`].
pub struct Part<F> {
    /// Its name, for timings and for a failure.
    pub name: &'static str,
    /// What undoes it.
    pub undo: Option<Undo>,
    /// The work.
    pub work: F,
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ok<T>(value: T) -> crate::Result<T> {
        Ok(value)
    }

    async fn fail<T>(why: &'static str) -> crate::Result<T> {
        Err(Error::failed(why))
    }

    #[test]
    fn a_failed_step_names_itself_and_keeps_its_undo_for_the_rollback() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let mut timings = Timings::default();
            let mut steps = Steps::new(&mut timings);
            steps.run("one", Some(Undo::Netns), ok(1)).await.unwrap();
            steps.run("two", None, ok(2)).await.unwrap();
            let err = steps
                .run("three", Some(Undo::Links), fail::<()>("no room"))
                .await
                .unwrap_err();
            assert_eq!(err.step, "three");
            assert_eq!(err.error.to_string(), "no room");
            // Last registered first; the failed step's own undo included.
            assert_eq!(steps.into_undos(), [Undo::Links, Undo::Netns]);
            let report = timings.report();
            assert!(report.contains("one") && report.contains("two"), "{report}");
            assert!(!report.contains("three"), "{report}");
        });
    }

    #[test]
    fn parts_run_together_register_both_undos_and_name_the_part_that_failed() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let mut timings = Timings::default();
            let mut steps = Steps::new(&mut timings);
            let (a, b) = steps
                .run_both(
                    "both",
                    Part {
                        name: "left",
                        undo: Some(Undo::HostRules),
                        work: ok('a'),
                    },
                    Part {
                        name: "right",
                        undo: None,
                        work: ok('b'),
                    },
                )
                .await
                .unwrap();
            assert_eq!((a, b), ('a', 'b'));
            let err = steps
                .run_both(
                    "again",
                    Part {
                        name: "left",
                        undo: None,
                        work: ok(()),
                    },
                    Part {
                        name: "right",
                        undo: Some(Undo::Units),
                        work: fail::<()>("refused"),
                    },
                )
                .await
                .unwrap_err();
            assert_eq!(err.step, "right");
            assert_eq!(steps.into_undos(), [Undo::Units, Undo::HostRules]);
            let report = timings.report();
            assert!(report.contains("of which, at the same time: left"), "{report}");
        });
    }
}

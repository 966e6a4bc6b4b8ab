"""The hello scenario in Python: one detect step that reports healthy and
counts its runs in the plugin's state. Built with componentize-py against
wit/ (world drhost:plugin/scenario@0.2.0); see build.sh."""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import drhost_plugin_types as t
from wit_world.imports import state


class Plugin(exports.Plugin):
    def info(self) -> t.ScenarioInfo:
        return t.ScenarioInfo(
            name="hello-py",
            version="0.1.0",
            description="A trivial scenario in Python: always healthy",
            components=[
                t.Component(
                    name="nothing",
                    kind=t.ComponentKind.OTHER,
                    priority=t.Priority.P3,
                    rto_seconds=60,
                    rpo_seconds=60,
                    description="nothing at all",
                )
            ],
            steps=[
                t.Step(
                    id="check",
                    phase=t.Phase.DETECT,
                    component="nothing",
                    budget_seconds=5,
                    mutating=False,
                    description="count the runs and report healthy",
                )
            ],
        )

    def run_step(self, id: str, context: list[t.Finding]) -> t.Outcome:
        for f in context:
            if f.key == "raise":
                # drhost's tests: how an uncaught exception is reported.
                raise ValueError(f.value)
        raw = state.get("runs")
        runs = int(raw.decode()) + 1 if raw else 1
        try:
            state.set("runs", str(runs).encode())
        except Err as e:
            return t.Outcome_Failed(f"state: {e.value}")
        return t.Outcome_Ok([t.Finding(key="runs", value=str(runs))])

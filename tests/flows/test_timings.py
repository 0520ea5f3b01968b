"""The pipeline run's timings table and console line (flows.timings)."""

from flows.timings import console_line, markdown

STAGES = {"prepare_data": 1.2, "evaluate": 140.0}
OPTS = {
    "learned": {"step_us": 35.0, "run_seconds": 4.0, "compile_seconds": 9.0},
    "adam": {"step_us": 10.0, "run_seconds": 2.5, "compile_seconds": 3.0},
}


def test_table_lists_stages_and_optimizers_cheapest_first():
    text = markdown(STAGES, ["report"], OPTS)
    assert "| evaluate | 140.0 |" in text and "| report | up to date (not run) |" in text
    assert "| total | 141.2 |" in text
    assert text.index("| adam | 10.0 | 2.5 | 3.0 |") < text.index("| learned | 35.0 | 4.0 | 9.0 |")


def test_without_an_evaluate_run_the_table_says_so():
    assert "Evaluate did not run in this pipeline run" in markdown({"report": 3.0}, [], {})


def test_console_line():
    line = console_line(STAGES, OPTS)
    assert (
        line == "l2o: wall-clock per stage: prepare_data 1s, evaluate 140s; µs per evaluation step: adam 10, learned 35"
    )

"""The evaluation's progress lines: the programs announced, one line per finished program with the ETAs."""

import re

from components.evaluation.progress import TaskProgress


def test_programs_announced_then_one_line_each_with_task_and_stage_eta():
    lines: list[str] = []
    a = TaskProgress("task_a", ["adam", "learned"], lines.append)
    b = TaskProgress("task_b", ["adam"], lines.append)  # another task of the same stage (threads)
    a.program_done("adam", 2.0, 0.5)
    b.program_done("adam", 1.0, 0.1)
    a.program_done("learned", 3.0, 0.2)
    a.close()
    b.close()
    assert lines[0] == "evaluate: task_a: 2 programs to compile and run (adam, learned)"
    assert lines[1] == "evaluate: task_b: 1 programs to compile and run (adam)"
    pattern = (
        r"evaluate: task_a: 1/2 adam \(compiled 2\.0s, ran 0\.5s\) \| task \d+s, ETA ~\d+s \| stage 1/3, ETA ~\d+s"
    )
    assert re.fullmatch(pattern, lines[2]), lines[2]
    assert " 1/1 adam " in lines[3] and "stage 2/3" in lines[3]
    assert re.search(r"task_a: 2/2 learned .* task \d+s, ETA ~0s \| stage 3/3, ETA ~0s$", lines[4]), lines[4]
    # the next stage (or the next call) counts afresh once every task of this one has closed
    c = TaskProgress("task_c", ["sgd"], lines.append)
    c.program_done("sgd", 1.0, 1.0)
    c.close()
    assert "stage 1/1" in lines[-1]


def test_silent_without_a_log(capsys):
    p = TaskProgress("t", ["adam"], None)
    p.program_done("adam", 1.0, 1.0)
    p.close()
    assert capsys.readouterr().out == ""

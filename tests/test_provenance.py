"""Provenance: every start or resume of a run records the code and machine it ran on (nowt.provenance)."""


def test_every_start_and_resume_of_a_run_records_its_code_and_machine(tmp_path):
    """A row's seeds were once trained by code before and after a fix, and nothing in their folders said so
    (biotorch-mnist's dfa): each start or resume now appends what ran it."""
    import json

    from conftest import teacher_task

    from nowt.train import TrainConfig, fit

    cfg = TrainConfig(rule="fa", hidden=(8,), epochs=1, batch_size=100, lr_schedule="constant",
                      out_dir=str(tmp_path))
    fit(cfg, *teacher_task(), progress=False)
    cfg.epochs = 2
    fit(cfg, *teacher_task(), resume=True, progress=False)
    records = [json.loads(line) for line in (tmp_path / "provenance.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    fit(cfg, *teacher_task(), resume=True, progress=False)  # ended: trains nothing, adds no line
    assert len((tmp_path / "provenance.jsonl").read_text().splitlines()) == 2
    assert all(r["torch"] and r["device"] == "cpu" and r["started"] for r in records)
    assert records[0]["commit"]  # this checkout's commit (tests run from the repository)
    # and the data it trained on, which `nowt report` keeps seeds apart by (--data-dir being no identity)
    assert records[0]["data"]["train"] == len(teacher_task()[0][1])
    assert records[0]["data"] == records[1]["data"]


def test_the_recorded_commit_is_nowts_own_and_marks_uncommitted_changes(monkeypatch):
    """A commit names the code only if it is nowt's checkout (not a repository that vendors it) and says when
    the tree differed from it."""
    from nowt import provenance

    src = provenance._SRC.parent.parent  # the checkout holding src/nowt
    answers = {"rev-parse": f"{src}\nabc1234", "status": ""}
    monkeypatch.setattr(provenance, "_git", lambda *args: answers[args[0]])
    for expected, top, status in (("abc1234", src, ""), ("abc1234+", src, " M src/nowt/ops.py"),
                                  (None, "/elsewhere", "")):
        provenance.commit.cache_clear()
        answers.update({"rev-parse": f"{top}\nabc1234", "status": status})
        assert provenance.commit() == expected
    provenance.commit.cache_clear()

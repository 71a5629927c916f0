"""The step runner (engine/steps.py) against a scripted exchange: single calls, multi-step with
variables, polling with backoff, failures and timeouts; and the shipped step specs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from engine.compile import BUILTIN_SPECS
from engine.errors import ClientError, UpstreamError
from engine.expr import ExprError, compile_node
from engine.source import load_file
from engine.steps import SINGLE_STEP, Outgoing, Step, compile_steps, run_steps


class Script:
    """An exchange that answers from a list and records what was sent; a clock sleep advances."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.sent: list[Outgoing] = []
        self.now = 0.0
        self.sleeps: list[float] = []

    async def __call__(self, out: Outgoing) -> Any:
        self.sent.append(out)
        return self.answers.pop(0)

    async def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s

    def run(self, steps: tuple[Step, ...], req: Any = None, enc: Any = None, meta: Any = None, path: str = "/x") -> Any:
        return asyncio.run(run_steps(steps, req or {}, enc, meta or {"model": "m1"}, self, endpoint_path=path,
                                     sleep=self.sleep, clock=lambda: self.now))


JOB: list[dict[str, Any]] = [
    {"name": "upload", "path": "/v2/upload", "send": "audio", "extract": {"url": "src.upload_url"}},
    {"name": "create", "path": "/v2/jobs", "body": {"$merge": ["enc", {"audio_url": "vars.url"}]}, "extract": {"id": "src.id"}},
    {"name": "poll", "method": "GET", "path": "/v2/jobs/{id}", "until": "src.status == 'done'",
     "fail": "src.status == 'error' && (src.error || 'failed')", "interval_s": 0.5, "backoff": 2, "max_interval_s": 1.5,
     "timeout_s": 10},
]


def test_without_steps_one_post_of_enc_to_the_endpoint() -> None:
    s = Script({"ok": 1})
    answer, vars_ = s.run(SINGLE_STEP, enc={"input": ["a"]}, path="/models/{model}:embed")
    assert answer == {"ok": 1} and vars_ == {}
    (out,) = s.sent
    assert (out.method, out.path, out.send, out.body) == ("POST", "/models/m1:embed", "json", {"input": ["a"]})


def test_steps_pass_variables_and_poll_with_backoff() -> None:
    s = Script({"upload_url": "https://u/1"}, {"id": "j/7", "status": "queued"},
               {"status": "queued"}, {"status": "processing"}, {"status": "processing"}, {"status": "done", "text": "hi"})
    answer, vars_ = s.run(compile_steps(JOB), enc={"speech_models": ["m1"]})
    assert answer == {"status": "done", "text": "hi"} and vars_ == {"url": "https://u/1", "id": "j/7"}
    assert [(o.method, o.path, o.send) for o in s.sent[:3]] == [
        ("POST", "/v2/upload", "audio"), ("POST", "/v2/jobs", "json"), ("GET", "/v2/jobs/j%2F7", "none")]
    assert s.sent[1].body == {"speech_models": ["m1"], "audio_url": "https://u/1"}
    assert s.sleeps == [0.5, 1.0, 1.5]  # doubling, capped by max_interval_s


def test_a_failed_job_is_an_upstream_error_with_its_reason() -> None:
    s = Script({"upload_url": "u"}, {"id": "1"}, {"status": "error", "error": "File does not appear to contain audio."})
    with pytest.raises(UpstreamError) as e:
        s.run(compile_steps(JOB))
    assert e.value.status == 502 and "File does not appear to contain audio." in e.value.message and "poll" in e.value.message


def test_polling_gives_up_at_the_timeout() -> None:
    s = Script({"upload_url": "u"}, {"id": "1"}, *[{"status": "processing"}] * 50)
    with pytest.raises(UpstreamError) as e:
        s.run(compile_steps(JOB))
    assert e.value.status == 504 and e.value.kind == "timeout" and "10s" in e.value.message
    assert s.now <= 10


def test_a_missing_path_variable_at_run_time() -> None:
    s = Script({"upload_url": "u"}, {"no_id": True})
    with pytest.raises(UpstreamError, match="gave no 'id'"):
        s.run(compile_steps(JOB))


def test_query_values_are_strings_and_nulls_are_dropped() -> None:
    steps = (Step(name="q", send="audio", query=compile_node({"model": "meta.model", "detect": True, "lang": "req.language", "n": 2})),)
    s = Script({})
    s.run(steps)
    assert s.sent[0].query == {"model": "m1", "detect": "true", "n": "2"}


def test_a_request_that_cannot_be_encoded_is_a_client_error() -> None:
    steps = (Step(name="bad", body=compile_node("= req.n / 0"), send="json"),)
    with pytest.raises(ClientError, match="cannot be translated"):
        Script({}).run(steps, req={"n": 1})


def test_compile_refuses_a_path_variable_no_earlier_step_extracts() -> None:
    with pytest.raises(ExprError, match=r"\{id\}.*not extracted"):
        compile_steps([{"path": "/jobs/{id}"}, {"extract": {"id": "src.id"}}])
    with pytest.raises(ExprError, match=r"steps\[0\]\.until"):
        compile_steps([{"until": "src.[["}])


@pytest.mark.parametrize("path", sorted((BUILTIN_SPECS / "formats").glob("*.yaml")), ids=lambda p: Path(p).stem)
def test_shipped_steps_compile(path: Path) -> None:
    doc, _ = load_file(path)
    if doc.data.get("steps"):
        assert compile_steps(doc.data["steps"], path.stem)


def test_the_shipped_assemblyai_steps_run() -> None:
    doc, _ = load_file(BUILTIN_SPECS / "formats" / "assemblyai.yaml")
    s = Script({"upload_url": "https://cdn/x"}, {"id": "t1", "status": "queued"}, {"status": "processing"},
               {"status": "completed", "text": "hello", "audio_duration": 1.5, "language_code": "en"})
    answer, vars_ = s.run(compile_steps(doc.data["steps"]), enc={"speech_models": ["universal-3-pro"]}, path="/v2/transcript")
    assert [o.path for o in s.sent] == ["/v2/upload", "/v2/transcript", "/v2/transcript/t1", "/v2/transcript/t1"]
    assert s.sent[1].body == {"speech_models": ["universal-3-pro"], "audio_url": "https://cdn/x"}
    assert answer["text"] == "hello" and vars_["id"] == "t1"


def test_repeat_makes_the_call_n_times_and_answers_the_list() -> None:
    steps = compile_steps([{"name": "gen", "body": "enc", "repeat": "req.n || `1`", "extract": {"seeds": "src[].seed"}}])
    s = Script({"seed": 1}, {"seed": 2}, {"seed": 3})
    answer, vars_ = s.run(steps, req={"n": 3}, enc={"prompt": "p"}, path="/w/{model}/t2i")
    assert answer == [{"seed": 1}, {"seed": 2}, {"seed": 3}] and vars_ == {"seeds": [1, 2, 3]}
    assert [(o.path, o.body) for o in s.sent] == [("/w/m1/t2i", {"prompt": "p"})] * 3
    one = Script({"seed": 9})
    assert one.run(steps, req={}, enc={})[0] == [{"seed": 9}]  # a list even for one call


def test_repeat_checks_fail_on_every_answer_and_stops_there() -> None:
    steps = compile_steps([{"body": "enc", "repeat": "req.n", "fail": "src.bad && 'filtered'"}])
    s = Script({"ok": 1}, {"bad": True}, {"ok": 3})
    with pytest.raises(UpstreamError, match="filtered"):
        s.run(steps, req={"n": 3}, enc={})
    assert len(s.sent) == 2


@pytest.mark.parametrize("n", [0, -1, 1.5, "2", True, None])
def test_repeat_needs_a_whole_count(n: Any) -> None:
    steps = compile_steps([{"body": "enc", "repeat": "req.n"}])
    with pytest.raises(ClientError, match="repeat must give a whole number"):
        Script().run(steps, req={"n": n}, enc={})


def test_repeat_and_until_do_not_mix() -> None:
    with pytest.raises(ExprError, match="both repeat and poll"):
        compile_steps([{"repeat": "`2`", "until": "src.done"}])


def test_the_shipped_fireworks_steps_make_one_call_per_image() -> None:
    doc, _ = load_file(BUILTIN_SPECS / "formats" / "fireworks-images.yaml")
    answers = [{"id": str(i), "base64": [f"data:image/png;base64,IMG{i}"], "finishReason": "SUCCESS", "seed": i} for i in range(2)]
    s = Script(*answers)
    path = "/workflows/accounts/fireworks/models/{model}/text_to_image"
    answer, _ = s.run(compile_steps(doc.data["steps"]), req={"n": 2}, enc={"prompt": "p"},
                      meta={"model": "flux-1-schnell-fp8"}, path=path)
    assert [o.path for o in s.sent] == ["/workflows/accounts/fireworks/models/flux-1-schnell-fp8/text_to_image"] * 2
    assert answer == answers
    filtered = Script({"id": "x", "base64": [], "finishReason": "CONTENT_FILTERED", "seed": 1})
    with pytest.raises(UpstreamError, match="CONTENT_FILTERED"):
        filtered.run(compile_steps(doc.data["steps"]), req={"n": 1}, enc={}, meta={"model": "m"}, path=path)

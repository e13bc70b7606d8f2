"""Domain errors name parameters and steps; the CLI spells them as flags and commands, the web as plain words."""

from __future__ import annotations

import pickle

from fastapi import FastAPI
from fastapi.testclient import TestClient

from lenscat.classifiers.ensemble import MissingMemberScores
from lenscat.cli.common import command_line, error_message, flag
from lenscat.embeddings.vectors import embed_step
from lenscat.errors import InputFileError, InvalidParameter, LenscatError, MissingPrerequisite, NotFoundError, Step
from lenscat.web.errors import install_error_handlers


def test_flag_spells_parameters_as_the_cli_does() -> None:
    assert flag("min_spread") == "--min-spread"
    assert flag("surveys") == "--survey" and flag("members") == "--member"  # repeatable singular flags


def test_step_as_a_command_line_and_as_a_sentence() -> None:
    step = Step(("learn", "start"), ((None, "my campaign"), ("encoder", "moco")), "start one with an encoder")
    assert command_line(step) == "run `lenscat learn start 'my campaign' --encoder moco`"
    exc = NotFoundError("no active-learning campaign 'x'; {step}", step=step)
    assert str(exc) == "no active-learning campaign 'x'; start one with an encoder"
    assert (
        error_message(exc) == "no active-learning campaign 'x'; run `lenscat learn start 'my campaign' --encoder moco`"
    )
    assert exc.param is None


def test_missing_prerequisite_renders_for_each_shell() -> None:
    exc = MissingPrerequisite("encoder moco@1 has no embeddings; {step}", embed_step("moco"))
    assert isinstance(exc, LenscatError)
    assert str(exc) == "encoder moco@1 has no embeddings; embed the sources with encoder moco"
    assert error_message(exc) == "encoder moco@1 has no embeddings; run `lenscat embed --encoder moco`"


def test_any_domain_error_may_name_parameters() -> None:
    exc = InputFileError("f.csv: no object-id column found; pass {id_col} NAME", params="id_col")
    assert isinstance(exc, InputFileError) and exc.param == "id_col"
    assert str(exc) == "f.csv: no object-id column found; pass id_col NAME"
    assert error_message(exc) == "f.csv: no object-id column found; pass --id-col NAME"
    # braces that are not a named parameter stay as written
    assert str(LenscatError("a set {x} and {step}")) == "a set {x} and {step}"


def test_errors_survive_pickling_with_their_parameters_and_steps() -> None:
    for exc in (
        InvalidParameter(("ratio", "val_ratio"), "{ratio} and {val_ratio} must be positive"),
        MissingPrerequisite("no scores: {step}", Step(("classifier", "score"), (("name", "c"),), "score with c")),
        MissingMemberScores("ens@1", "member ens@1 has scored 3 of the 5 sources it can score"),
        InputFileError("x: pass {bands}", params="bands"),
    ):
        again = pickle.loads(pickle.dumps(exc))
        assert type(again) is type(exc)
        assert str(again) == str(exc) and error_message(again) == error_message(exc)
        assert again.params == exc.params and again.step == exc.step
    member = pickle.loads(pickle.dumps(MissingMemberScores("ens@1", "member ens@1 has scored 3 of 5")))
    assert member.member == "ens@1"
    assert error_message(member) == "member ens@1 has scored 3 of 5: run `lenscat classifier score --name ens@1` first"
    assert str(member) == "member ens@1 has scored 3 of 5: score the sources with classifier ens@1 first"


def test_the_web_answers_with_plain_words_and_the_field() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/api/param")
    def param() -> None:
        raise InvalidParameter("min_spread", "{min_spread} must be 1, 2 or 3 grade points")

    @app.get("/api/step")
    def step() -> None:
        raise MissingPrerequisite("encoder e@1 has no embeddings; {step}", embed_step("e"))

    client = TestClient(app)
    got = client.get("/api/param")
    assert got.status_code == 400
    assert got.json() == {"error": "min_spread must be 1, 2 or 3 grade points", "param": "min_spread"}
    got = client.get("/api/step")
    assert got.status_code == 400
    assert got.json() == {"error": "encoder e@1 has no embeddings; embed the sources with encoder e"}
    assert "lenscat" not in got.text and "--" not in got.text

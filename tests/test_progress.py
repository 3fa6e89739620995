"""What a run prints when its output is a log file or a CI log: a heartbeat while nothing else is printed, and the
last step even when logging_steps does not reach it (the prefix-tuning example stopped at step 20/27)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from tunelab.callbacks import HEARTBEAT_SECONDS, ProgressCallback


def _state(step: int, total: int) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, max_steps=total, is_world_process_zero=True, epoch=0.0)


def test_a_silent_log_gets_a_heartbeat_and_the_last_step_is_printed(capsys):
    progress, state = ProgressCallback(), _state(0, 27)
    progress.on_train_begin(None, state, None)
    try:
        assert "train 27 optimizer steps" in capsys.readouterr().err
        now = time.perf_counter()
        progress.heartbeat(now + HEARTBEAT_SECONDS / 2)
        assert capsys.readouterr().err == ""  # something was printed recently: no heartbeat yet
        state.global_step = 12
        progress.heartbeat(now + HEARTBEAT_SECONDS + 1)
        assert "step 12/27 (44%)" in capsys.readouterr().err
        progress.on_log(None, state, None, logs={"loss": 1.5, "learning_rate": 1e-3})
        assert "step 12/27 (44%)  loss 1.5000  lr 1.00e-03" in capsys.readouterr().err
        state.global_step = 27  # logging_steps 10 logged step 20 last; the run ends at 27
        progress.on_train_end(None, state, None)
        assert "step 27/27 (100%)" in capsys.readouterr().err
    finally:
        progress.close()


def test_the_last_step_is_not_printed_twice(capsys):
    progress, state = ProgressCallback(), _state(0, 20)
    progress.on_train_begin(None, state, None)
    state.global_step = 20
    progress.on_log(None, state, None, logs={"loss": 0.5})
    progress.on_train_end(None, state, None)
    assert capsys.readouterr().err.count("step 20/20") == 1


def test_sigterm_stops_at_once_outside_training_and_after_the_step_inside():
    import signal

    import pytest

    from tunelab.signals import STOP, TERMINATED, Terminated, handling_sigterm

    with handling_sigterm():
        with pytest.raises(Terminated):  # nothing to save: stop now
            STOP.handle(signal.SIGTERM, None)
        assert STOP.exit_code == TERMINATED
        STOP.reset()
        STOP.training = True
        STOP.handle(signal.SIGTERM, None)  # training: asks GracefulStop to end after this step
        assert STOP.requested.is_set()
        with pytest.raises(Terminated):  # a second one stops at once
            STOP.handle(signal.SIGTERM, None)
    assert signal.getsignal(signal.SIGTERM) != STOP.handle  # the earlier handler is back after the command
    STOP.reset()


def test_chat_ends_on_sigterm_but_only_its_answer_on_ctrl_c():
    import io

    import pytest

    from tunelab.inference.chat import run_chat
    from tunelab.signals import Terminated

    class Answers:
        def stream(self, query, history, system):
            raise KeyboardInterrupt  # Ctrl-C while answering

    lines = iter(["hello", "/exit"])
    output = io.StringIO()
    run_chat(Answers(), input_fn=lambda prompt: next(lines), output=output)
    assert "[interrupted]" in output.getvalue()  # the chat went on to read /exit

    def terminated(prompt):
        raise Terminated

    with pytest.raises(Terminated):  # SIGTERM at the prompt ends the command (exit 143), not just the chat
        run_chat(Answers(), input_fn=terminated, output=io.StringIO())

"""The restart policy: growing, capped delays; a long run resets them; failures before
the consumer ever ran make the runner give up; a crash loop is flagged."""

from __future__ import annotations

from safesync_async.worker.restarts import RestartHistory, RestartPolicy


def test_delays_double_up_to_the_cap_and_a_stable_run_resets_them() -> None:
    """Crashes after short runs wait 0.5, 1, 2... s up to the cap; from the third in a row
    it is a crash loop; a run longer than stable_after starts over at 0.5 s."""
    history = RestartHistory(RestartPolicy(initial_delay=0.5, max_delay=3.0, stable_after=60))
    decisions = [history.record_exit(uptime=1.0, started=True) for _ in range(5)]
    assert [d.delay for d in decisions] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert [d.crash_loop for d in decisions] == [False, False, True, True, True]
    assert not any(d.give_up for d in decisions) and history.restarts == 5
    after_long_run = history.record_exit(uptime=61.0, started=True)
    assert (after_long_run.delay, after_long_run.crash_loop) == (0.5, False)


def test_gives_up_after_start_failures_in_a_row_only() -> None:
    """max_start_failures exits in a row before the consumer ran give up; a process that
    ran in between resets that count."""
    history = RestartHistory(RestartPolicy(max_start_failures=3))
    assert not history.record_exit(uptime=0.1, started=False).give_up
    assert not history.record_exit(uptime=0.1, started=False).give_up
    assert not history.record_exit(uptime=5.0, started=True).give_up  # it ran: reset
    assert not history.record_exit(uptime=0.1, started=False).give_up
    assert not history.record_exit(uptime=0.1, started=False).give_up
    final = history.record_exit(uptime=0.1, started=False)
    assert final.give_up and final.start_failures == 3


def test_reset_forgets_the_past() -> None:
    """A deliberate restart (reload) starts the backoff over."""
    history = RestartHistory(RestartPolicy())
    for _ in range(4):
        history.record_exit(uptime=0.1, started=False)
    history.reset()
    decision = history.record_exit(uptime=0.1, started=False)
    assert (decision.delay, decision.give_up, decision.start_failures) == (0.5, False, 1)

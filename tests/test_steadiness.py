"""common.report.steadiness: the spread of repeats equals a hand computation, /proc/stat's busy time is summed over
the cores this process may use, the load of other processes is busy time minus this process tree's CPU time (a
process outside the tree is seen, this process and its children are not), a missing /proc/stat leaves the load
unknown, and the one warning line appears exactly when a limit is crossed."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from common.report import steadiness
from common.report.steadiness import Load

PROC_STAT = """cpu  1000 50 300 9000 40 7 3 10 0 0
cpu0 400 20 100 4500 20 2 1 5 0 0
cpu1 600 30 200 4500 20 5 2 5 0 0
intr 123 0 0
"""
LINUX = os.path.exists(steadiness.PROC_STAT)
# A python that burns ``CPU`` seconds of its own CPU time, then exits.
SPIN = "import time\nend = time.process_time() + {cpu}\nwhile time.process_time() < end:\n    pass\n"


def spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (not ended, nor a zombie waiting for its new parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_spread_is_the_interquartile_range_over_the_median_in_percent():
    # inclusive quartiles of 10 11 12 13 20: 11 and 13; median 12
    assert steadiness.spread_pct([12, 20, 10, 13, 11]) == pytest.approx(100 * (13 - 11) / 12)
    # two repeats: quartiles a quarter of the way in from each end, (12 - 10) / 2 apart, median 11
    assert steadiness.spread_pct([10, 12]) == pytest.approx(100 * 1 / 11)
    assert steadiness.spread_pct([5.0]) is None and steadiness.spread_pct([]) is None
    assert steadiness.spread_pct([3, 3, 3]) == 0.0
    assert steadiness.worst([None, 4.0, 12.5]) == 12.5 and steadiness.worst([None]) is None


def test_proc_stat_busy_ticks_are_user_nice_system_irq_softirq_steal_of_the_cores_asked():
    assert steadiness.parse_proc_stat(PROC_STAT, [0]) == 400 + 20 + 100 + 2 + 1 + 5
    assert steadiness.parse_proc_stat(PROC_STAT, [0, 1]) == 528 + 600 + 30 + 200 + 5 + 2 + 5
    assert steadiness.parse_proc_stat(PROC_STAT, None) == 1000 + 50 + 300 + 7 + 3 + 10
    assert steadiness.parse_proc_stat(PROC_STAT, [0, 7]) == 1370  # a core the text lacks: the whole machine
    assert steadiness.parse_proc_stat("intr 1 2\n", [0]) is None


def test_other_load_is_busy_time_less_this_process_trees_and_never_below_zero():
    start = steadiness._Reading(wall=10.0, busy=100.0, own=5.0)
    load = steadiness.load_between(start, steadiness._Reading(wall=12.0, busy=104.0, own=6.2), cores=2)
    assert load.other_seconds == pytest.approx(2.8) and load.other_cores == pytest.approx(1.4)
    assert load.describe() == "other processes used 1.40 of 2 cores"
    quiet = steadiness.load_between(start, steadiness._Reading(wall=11.0, busy=101.0, own=6.02), cores=2)
    assert quiet.other_seconds == 0.0
    unknown = steadiness.load_between(steadiness._Reading(10.0, None, 5.0), steadiness._Reading(11.0, None, 6.0), 2)
    assert unknown.other_cores is None and not unknown.too_high()


@pytest.mark.skipif(not LINUX, reason="reads /proc/stat")
def test_the_meter_sees_the_cpu_time_of_a_process_outside_this_one():
    """A grandchild whose parent has exited belongs to no one here: its CPU time is other processes' load."""
    detached = "import os\npid = os.fork()\nif pid:\n    print(pid)\n    os._exit(0)\n" + SPIN.format(cpu=0.6)
    with steadiness.LoadMeter() as meter:
        pid = int(subprocess.run([sys.executable, "-c", detached], check=True, capture_output=True).stdout)
        deadline = time.monotonic() + 60  # on a busy machine the spinner needs more than 0.6 s of wall time
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not alive(pid)
    assert meter.load.other_seconds >= 0.55  # its 0.6 s, less a clock tick or two; others' work can only add
    assert meter.load.cores == len(os.sched_getaffinity(0))


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_this_process_and_its_children_are_not_counted_as_other_load():
    """Own CPU time covers this process, a finished child and a child still running (a DataLoader worker), so
    that a quiet machine shows no other load while the run itself keeps every core busy."""
    before = steadiness.own_cpu_seconds()
    running = subprocess.Popen([sys.executable, "-c", SPIN.format(cpu=30)])
    subprocess.run([sys.executable, "-c", SPIN.format(cpu=0.2)], check=True)
    spin(0.2)
    time.sleep(0.3)  # the running child spins meanwhile
    try:
        with open(f"/proc/{running.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        child = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        grown = steadiness.own_cpu_seconds() - before
    finally:
        running.kill()
        running.wait()
    assert child > 0.1 and grown >= 0.2 + 0.2 + child - 0.05


def test_without_proc_stat_the_load_is_unknown_and_nothing_fails(monkeypatch, tmp_path):
    monkeypatch.setattr(steadiness, "PROC_STAT", str(tmp_path / "no-proc-stat"))
    with steadiness.LoadMeter() as meter:
        pass
    assert meter.load.other_seconds is None and "unknown" in meter.load.describe()
    assert steadiness.csv_fields(meter.load) == {"other_cores": "", "reliable": "unknown"}
    assert steadiness.csv_fields(meter.load, 3.0)["reliable"] == "yes"
    assert steadiness.verdict("x", 3.0, meter.load) is None


def loaded(other_cores: float) -> Load:
    return Load(other_cores * 10, 2, 10.0)


@pytest.mark.parametrize("spread, other, reasons", [
    (None, 0.0, []), (9.9, 0.19, []), (10.1, 0.0, ["spread"]), (3.0, 0.21, ["load"]), (23.0, 1.4, ["spread", "load"])])
def test_the_warning_line_appears_exactly_when_a_limit_is_crossed(spread, other, reasons):
    assert (steadiness.SPREAD_LIMIT_PCT, steadiness.LOAD_LIMIT * 2) == (10.0, 0.2)
    line = steadiness.verdict("ghostnet latency", spread, loaded(other))
    fields = steadiness.csv_fields(loaded(other), spread)
    assert fields["other_cores"] == round(other, 2)
    if not reasons:
        assert line is None and fields["reliable"] == "yes"
        return
    assert fields["reliable"] == "no" and "\n" not in line
    assert line.startswith("warning: ghostnet latency is unreliable: ") and line.endswith("rerun on an idle machine")
    assert ("repeats spread" in line) == ("spread" in reasons) and ("other processes" in line) == ("load" in reasons)
    if reasons == ["spread", "load"]:
        assert line == ("warning: ghostnet latency is unreliable: repeats spread 23% (limit 10%) and other processes "
                        "used 1.40 of 2 cores (limit 0.2) during the run; rerun on an idle machine")


def test_a_row_is_judged_by_its_worst_spread_and_the_load():
    row = {"model": "ghostnet", "defaults_latency_spread_pct": 3.2, "fp32_latency_spread_pct": 12.0,
           "ort_fp32_latency_spread_pct": ""}
    assert steadiness.row_spreads(row) == [3.2, 12.0]
    fields, line = steadiness.judge_row(row, loaded(0.05), "ghostnet's timing")
    assert fields == {"other_cores": 0.05, "reliable": "no"}
    assert line.startswith("warning: ghostnet's timing is unreliable: repeats spread 12% (limit 10%) during")
    assert steadiness.judge_row({"model": "x", "fp32_latency_spread_pct": 3.2}, loaded(0.05), "x") == (
        {"other_cores": 0.05, "reliable": "yes"}, None)

"""corsa.text: the one table renderer and the one metric format of every command and report."""

from corsa.text import fmt_metric, printable, show_table


def test_a_table_rules_its_header_and_aligns_numbers_right_when_asked():
    rows = [["lora", "5.0%", "+0.123"], ["corsa-lifelong", "100.0%", "-1.500"]]
    assert show_table(rows, ["method", "reliability", "margin"]).splitlines() == [
        "method          reliability  margin",
        "--------------  -----------  ------",
        "lora            5.0%         +0.123",
        "corsa-lifelong  100.0%       -1.500"]
    assert show_table(rows, ["method", "reliability", "margin"], numbers=True).splitlines()[2:] == [
        "lora                   5.0%  +0.123",
        "corsa-lifelong       100.0%  -1.500"]


def test_a_cell_cannot_drive_the_terminal():
    table = show_table([["e1", "Rome\x1b[2J"]], ["edit", "answer"])
    assert "\x1b" not in table and "Rome\\x1b[2J" in table
    assert printable("two\nlines", keep_newlines=True) == "two\nlines" and printable("a\rb") == "a\\rb"


def test_metrics_print_as_percent_margins_as_signed_nats_and_none_as_a_dash():
    assert fmt_metric(0.5, "generated/reliability") == "50.0%"
    assert fmt_metric(-1.25, "teacher_forced/margin") == "-1.250"
    assert fmt_metric(None, "code/held_out/pass@5") == "–"

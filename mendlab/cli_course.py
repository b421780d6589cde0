"""``mendlab course``: the course as files (:mod:`mendlab.course`).

``mendlab course student-copy OUT [--force]`` writes the notebooks with their exercises' solutions removed and
every output cleared, with the chapters, into OUT.
"""

from __future__ import annotations

from pathlib import Path

from mendlab.cli_tables import command, emit


def cmd_student_copy(args) -> None:
    from mendlab import course

    counts = course.exercise_counts()
    written = course.student_copy(args.out, force=args.force)
    out = Path(args.out)
    lines = [f"student copy of the course in {out}: {len(written)} files, "
             f"{sum(counts.values())} exercises with their solutions removed, outputs cleared"]
    lines += [f"  {p}" + (f"  ({counts[p.name]} exercises)" if p.name in counts else "") for p in written]
    emit(args, {"out": str(out), "files": [str(p) for p in written], "exercises": counts}, "\n".join(lines))


def cmd_timings(args) -> None:
    from mendlab import course
    from mendlab.config import profile
    from mendlab.experiments import report

    table = report.ResultsTable(args.out, report.provenance(report.command_line(args.argv), profile(), [],
                                                            notebooks=args.notebooks)) if args.out else None
    names = [n for n in (args.notebooks or "").split(",") if n]
    frame = course.time_notebooks(names, on_row=table.add if table is not None else None, progress=not args.json)
    if table is not None:
        table.close()
    emit(args, {"rows": frame.to_dict(orient="records")}, frame.to_string(index=False))


def add_parser(sub) -> None:
    """``mendlab course student-copy OUT [--force] [--json]`` and ``mendlab course timings [--out CSV]``."""
    c = sub.add_parser("course", help="the course as files: write the student copy, time the notebooks")
    csub = c.add_subparsers(dest="course_cmd", required=True)
    s = command(csub, "student-copy", cmd_student_copy,
                "write the notebooks (solutions removed, outputs cleared) and chapters into OUT")
    s.add_argument("out", metavar="OUT", help="the folder to write (must be empty or new unless --force)")
    s.add_argument("--force", action="store_true", help="write into OUT even when it is not empty")
    t = command(csub, "timings", cmd_timings, "run every notebook top to bottom in a fresh kernel and time it")
    t.add_argument("--notebooks", default=None, help="only these, by number prefix (e.g. 00,03)")
    t.add_argument("--out", default=None, help="write the rows as CSV with a provenance sidecar "
                                               "(e.g. results/course_timings.csv)")

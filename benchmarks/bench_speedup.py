"""Teacher vs student forecast speed per 12 h step: measured speedup against the denoiser-call ratio.

Usage:
    python benchmarks/bench_speedup.py --teacher CKPT --student CKPT --data STORE
                                       [--members 4] [--inits 2] [--repeats 7] [--json]

Both models forecast the same inits, members, batch and grid with the same
rollout code (`gencast_rmmd.forecast.speed`, shared with the pipeline's speed
stage). Each is compiled first; then `--repeats` single 12 h steps are timed
for each, teacher and student interleaved, and the medians are compared. The
ideal speedup is the denoiser-call ratio (teacher NFE / student NFE);
efficiency = measured / ideal.
With `--json` the last line is a JSON object with at least `speedup` and `nfe_ratio`.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax

from gencast_rmmd.errors import UserInputError
from gencast_rmmd.forecast.speed import measure_step_times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--data", default=None, help="store (default: the teacher's training store)")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--inits", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        timings = measure_step_times({"teacher": args.teacher, "student": args.student}, args.data,
                                     args.members, args.inits, args.repeats)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    teacher, student = timings["teacher"], timings["student"]
    teacher_step, student_step = teacher.seconds_per_step, student.seconds_per_step
    speedup, nfe_ratio = teacher_step / student_step, teacher.nfe_per_step / student.nfe_per_step
    result = {
        "teacher_seconds_per_step": teacher_step, "student_seconds_per_step": student_step,
        "teacher_nfe_per_step": teacher.nfe_per_step, "student_nfe_per_step": student.nfe_per_step,
        "nfe_ratio": nfe_ratio, "speedup": speedup, "efficiency": speedup / nfe_ratio,
        "members": args.members, "inits": args.inits, "repeats": args.repeats,
        "device": jax.devices()[0].platform, "teacher_compile_seconds": teacher.compile_seconds,
        "student_compile_seconds": student.compile_seconds,
    }
    print(f"teacher: {teacher_step * 1000:.1f} ms per 12 h step ({teacher.nfe_per_step} denoiser calls)")
    print(f"student: {student_step * 1000:.1f} ms per 12 h step ({student.nfe_per_step} denoiser calls)")
    print(f"denoiser-call ratio (ideal speedup) {nfe_ratio:.2f}x, measured speedup {speedup:.2f}x, "
          f"efficiency {speedup / nfe_ratio:.2f} (median of {args.repeats}, {args.members} members x "
          f"{args.inits} inits, {result['device']})")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

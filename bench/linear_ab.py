#!/usr/bin/env python3
"""linear_ab.py — runtime/linear's products, one build (or setting) against
another, measured alternately in one run on the same machine.

    python3 bench/linear_ab.py [--reps 3] [-m 1,2,4,8,16,32] [-t 1]
        [-d f32,bf16] [-s small] [--out FILE] NAME=SPEC NAME=SPEC [...]

SPEC is a dpep_linear_perf binary, optionally followed by environment
settings after commas: `old=/tmp/old/bench/dpep_linear_perf`,
`rows=build/bench/dpep_linear_perf,DPEP_CPU_LINEAR_M1=rows`. Each repetition
runs every configuration once, in the order given (a slow spell of a shared
machine lands on all of them, not on one), as `dpep_linear_perf -s SET -m M
-t T -d D -r 9` (median of 9 timings per shape within a run). Per shape,
dtype and M it prints the median over the repetitions of each
configuration's streaming-kernel time (µs) beside the BLAS path's, and the
ratio first / other (> 1: the other is faster); then, per dtype and M, the
geometric mean of those ratios over the shapes. A difference under ~5% is
inside the noise of a shared 2-core VM (the same binary against itself
moved up to 8% in one such run). Exit code 0, 1 when a run fails or reports
wrong results, 2 on bad usage.
"""
import argparse
import collections
import math
import os
import statistics
import subprocess
import sys


def parse_spec(text):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text}: expected NAME=BINARY[,VAR=VALUE...]")
    name, rest = text.split("=", 1)
    parts = rest.split(",")
    env = {}
    for kv in parts[1:]:
        if "=" not in kv:
            raise argparse.ArgumentTypeError(f"{text}: setting '{kv}' is not VAR=VALUE")
        k, v = kv.split("=", 1)
        env[k] = v
    if not name or not parts[0]:
        raise argparse.ArgumentTypeError(f"{text}: empty name or binary")
    return name, parts[0], env


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", nargs="+", type=parse_spec, metavar="NAME=SPEC")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("-m", default="1,2,4,8,16,32", help="activation rows (dpep_linear_perf -m)")
    ap.add_argument("-t", default="1", help="one thread count (dpep_linear_perf -t)")
    ap.add_argument("-d", default="f32,bf16", help="dtypes (dpep_linear_perf -d)")
    ap.add_argument("-s", default="small", help="shape set (dpep_linear_perf -s)")
    ap.add_argument("--out", help="also write the table to this file")
    a = ap.parse_args()
    if len(a.configs) < 2:
        ap.error("need at least two configurations to compare")
    if "," in a.t:
        ap.error("-t takes one thread count per run of this script")
    for name, binary, _ in a.configs:
        if not os.access(binary, os.X_OK):
            print(f"linear_ab.py: {name}: {binary} is not an executable", file=sys.stderr)
            return 2

    stream = collections.defaultdict(list)
    blas = collections.defaultdict(list)
    for rep in range(a.reps):
        for name, binary, extra in a.configs:
            env = dict(os.environ, **extra)
            cmd = [binary, "-s", a.s, "-m", a.m, "-t", a.t, "-d", a.d, "-r", "9"]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if p.returncode != 0:
                print(f"linear_ab.py: {name} (rep {rep + 1}): {' '.join(cmd)} exited "
                      f"{p.returncode}:\n{p.stdout[-2000:]}{p.stderr[-2000:]}", file=sys.stderr)
                return 1
            for line in p.stdout.splitlines():
                f = line.split()
                # set shape N K type M T stream GB/s GFLOP/s blas ...
                if len(f) > 10 and f[0] in ("small", "v3"):
                    key = (f[1], f[4], int(f[5]))
                    stream[key + (name,)].append(float(f[7]))
                    blas[key].append(float(f[10]))
    names = [c[0] for c in a.configs]
    keys = sorted({k[:3] for k in stream}, key=lambda k: (k[1], k[0], k[2]))
    if not keys:
        print("linear_ab.py: no result lines parsed", file=sys.stderr)
        return 1
    lines = [f"# dpep_linear_perf -s {a.s} -m {a.m} -t {a.t} -d {a.d} -r 9; {a.reps} "
             f"alternating repetitions; times in us (medians over the repetitions)",
             "%-12s %-4s %4s " % ("shape", "type", "M") + " ".join("%10s" % n for n in names)
             + " %10s  " % "blas" + " ".join("%s/%s" % (names[0], n) for n in names[1:])]
    for k in keys:
        vals = [statistics.median(stream[k + (n,)]) for n in names]
        lines.append("%-12s %-4s %4d " % k + " ".join("%10.1f" % v for v in vals)
                     + " %10.1f  " % statistics.median(blas[k])
                     + " ".join("%*.2f" % (len(names[0]) + len(n) + 1, vals[0] / v)
                                for n, v in zip(names[1:], vals[1:])))
    lines.append(f"# geometric mean over shapes of {names[0]} time / other time (> 1: other faster)")
    for dt in sorted({k[1] for k in keys}):
        for m in sorted({k[2] for k in keys}):
            ks = [k for k in keys if k[1] == dt and k[2] == m]
            g = [math.exp(sum(math.log(statistics.median(stream[k + (names[0],)])
                                       / statistics.median(stream[k + (n,)])) for k in ks)
                          / len(ks)) for n in names[1:]]
            lines.append("%-4s M=%-4d " % (dt, m) + "  ".join("%s %.3f" % (n, x)
                                                            for n, x in zip(names[1:], g)))
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if a.out:
        with open(a.out, "w") as fo:
            fo.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

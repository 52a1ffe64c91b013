"""Turns a pytest-benchmark JSON into a Markdown table: per group, each benchmark's median and the
peer's median over ours (the speed-up; > 1 means ours is faster)."""
import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    runs = json.load(open(path))
    groups = defaultdict(dict)
    for b in runs["benchmarks"]:
        groups[b["group"]][b["name"].split("[")[0].removeprefix("test_")] = b["stats"]["median"]
    info = runs["machine_info"]
    print(f"machine: {info.get('cpu', {}).get('brand_raw', '?')}, python {info.get('python_version')}, "
          f"date {runs['datetime'][:10]}")
    print("\n| group | ours (ms) | peer (ms) | peer / ours | other |\n|---|---|---|---|---|")
    for group, times in groups.items():
        ours = next(v for k, v in times.items() if k.endswith("_ours"))
        peer = next(v for k, v in times.items() if k.endswith("_peer"))
        other = ", ".join(f"{k}: {v * 1e3:.2f} ms (ours/this {ours / v:.2f})" for k, v in times.items()
                          if not k.endswith(("_ours", "_peer")))
        print(f"| {group} | {ours * 1e3:.2f} | {peer * 1e3:.2f} | {peer / ours:.2f}x | {other} |")


if __name__ == "__main__":
    main(sys.argv[1])

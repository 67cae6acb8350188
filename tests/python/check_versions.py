"""Reads every version of a skuflow dataset table (the deltalake package and pyarrow) and checks
that each one is consistent: exactly one row per natural key, no key lost from one version to
the next, and no key's record_version ever going back.

Usage: python3 check_versions.py <dataset root>
"""
import collections
import sys

import deltalake
import pyarrow.dataset as ds

root = sys.argv[1]
latest = deltalake.DeltaTable(root).version()
problems = []
before = {}
checked = 0
for v in range(1, latest + 1):
    files = deltalake.DeltaTable(root, version=v).file_uris()
    if not files:
        continue
    t = ds.dataset(files).to_table(columns=["country", "store_id", "sku", "business_date", "record_version"])
    keys = list(zip(*(t.column(c).to_pylist() for c in ("country", "store_id", "sku", "business_date"))))
    versions = t.column("record_version").to_pylist()
    dup = [k for k, n in collections.Counter(keys).items() if n > 1]
    if dup:
        problems.append(f"version {v}: {len(dup)} keys in two rows, e.g. {dup[:2]}")
    now = dict(zip(keys, versions))
    lost = [k for k in before if k not in now]
    if lost:
        problems.append(f"version {v}: {len(lost)} keys of version {v - 1} are gone, e.g. {lost[:2]}")
    back = [k for k, r in now.items() if k in before and r < before[k]]
    if back:
        problems.append(f"version {v}: {len(back)} keys went back to an older record, e.g. {back[:2]}")
    before = now
    checked += 1
if problems:
    print(f"{len(problems)} problems:")
    for p in problems[:20]:
        print(" -", p)
    sys.exit(1)
print(f"ok: {checked} versions consistent, {len(before)} keys at version {latest}")

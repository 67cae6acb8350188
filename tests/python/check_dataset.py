"""Reads a skuflow dataset (a Delta Lake table) with real clients (the deltalake package, pyarrow,
polars, DuckDB) and checks it against the expected newest records (JSON lines written by the Rust
test): declared schema and types, exactly one row per natural key, exact values, features
recomputed here with `decimal`, manifests.

Usage: python3 check_dataset.py <dataset root> <expected.jsonl> [<table version>]
With a version, that version is read (time travel) and the manifests, which describe the latest
version, are not checked.
"""
import collections
import decimal
import hashlib
import json
import os
import pathlib
import sys

import datetime

import deltalake
import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds

D = decimal.Decimal
root = pathlib.Path(sys.argv[1])
expected = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8")]
version = int(sys.argv[3]) if len(sys.argv) > 3 else None
# The builder's --time-split, when it was given one.
cutoffs = os.environ["TIME_SPLIT"].split(",") if os.environ.get("TIME_SPLIT") else None
dt = deltalake.DeltaTable(str(root), version=version)
# The documented path for pyarrow and DuckDB: the files the table's version names.
files = dt.file_uris()
want = {(r["country"], r["store_id"], r["sku"], r["business_date"]): r for r in expected}
problems = []


def check(cond, what):
    if not cond:
        problems.append(what)


# The history features, computed here with pandas from the expected rows: each row's key on the
# days before it (point in time), by joins on shifted days.
frame_in = pd.DataFrame({
    "country": [r["country"] for r in expected],
    "store_id": [r["store_id"] for r in expected],
    "sku": [r["sku"] for r in expected],
    "day": [datetime.date.fromisoformat(r["business_date"]) for r in expected],
    "units": [r["units_sold"] for r in expected],
    "price": [D(r["unit_price"]) for r in expected],
})
KEY = ["country", "store_id", "sku"]


def back(n):
    """Each row's key n days earlier: units and price of that day (NaN when it has no row)."""
    shifted = frame_in.assign(day=frame_in["day"] + datetime.timedelta(days=n))
    return frame_in[KEY + ["day"]].merge(shifted, on=KEY + ["day"], how="left")


prev_day, prev_week = back(1), back(7)
lags = pd.concat([back(n).assign(n=n) for n in range(1, 29)]).dropna(subset=["units"])
mean7 = lags[lags["n"] <= 7].groupby(KEY + ["day"])["units"].mean()
mean28 = lags.groupby(KEY + ["day"])["units"].mean()
lag_rows = {k: g for k, g in lags.groupby(KEY + ["day"])}
want_history = {}
for i, r in frame_in.iterrows():
    k = (r["country"], r["store_id"], r["sku"], r["day"].isoformat())
    p1, p7 = prev_day.iloc[i]["units"], prev_week.iloc[i]["units"]
    kk = (r["country"], r["store_id"], r["sku"], r["day"])
    # Days since the price changed: walk back over the key's earlier rows of the 28 days.
    earlier = lag_rows.get(kk)
    since, start = None, 0
    for _, e in (earlier.sort_values("n").iterrows() if earlier is not None else []):
        if e["price"] != r["price"]:
            since = start
            break
        start = int(e["n"])
    want_history[k] = (
        None if pd.isna(p1) else int(p1),
        None if pd.isna(p7) else int(p7),
        mean7.get(kk),
        mean28.get(kk),
        since,
    )

countries = sorted({r["country"] for r in expected})
check(sorted(p.name for p in root.glob("country=*")) == [f"country={c}" for c in countries],
      f"country directories {sorted(p.name for p in root.glob('country=*'))}")

check(dt.metadata().partition_columns == ["country", "business_date"],
      f"partition columns {dt.metadata().partition_columns}")
everything = ds.dataset(files, format="parquet").to_table()
with_median = 0  # rows whose category had a median the day before
for country in countries:
    base = root / f"country={country}"
    table = everything.filter(ds.field("country") == country)
    schema = table.schema
    types = {f.name: f.type for f in schema}
    check(types["unit_price"] == pa.decimal128(18, 4), f"unit_price is {types['unit_price']}")
    check(types["unit_cost"] == pa.decimal128(18, 4), f"unit_cost is {types['unit_cost']}")
    check(types["gross_margin"] == pa.decimal128(18, 4), f"gross_margin is {types['gross_margin']}")
    check(types["business_date"] == pa.date32(), f"business_date is {types['business_date']}")
    check(types["quantity_on_hand"] == pa.int32(), f"quantity_on_hand is {types['quantity_on_hand']}")
    check(types["source_last_modified"] == pa.timestamp("us", tz="UTC"),
          f"source_last_modified is {types['source_last_modified']}")
    for f in ("margin_pct", "days_of_cover", "price_rel_prev_day_category_median"):
        check(types[f] == pa.float64(), f"{f} is {types[f]}")
    rows = table.to_pylist()
    keys = [(r["country"], r["store_id"], r["sku"], r["business_date"].isoformat()) for r in rows]
    dup = [k for k, n in collections.Counter(keys).items() if n > 1]
    check(not dup, f"{country}: duplicate natural keys {dup[:5]}")
    mine = {k: r for k, r in want.items() if k[0] == country}
    check(set(keys) == set(mine), f"{country}: {len(set(keys))} keys, want {len(mine)}; "
          f"missing {sorted(set(mine) - set(keys))[:3]}, extra {sorted(set(keys) - set(mine))[:3]}")
    # Category medians per day, recomputed here.
    prices = collections.defaultdict(list)
    for k, r in mine.items():
        prices[(k[3], r["category"])].append(D(r["unit_price"]))
    medians = {}
    for k, v in prices.items():
        v.sort()
        n = len(v)
        medians[k] = v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2
    splits = collections.Counter()
    for r, k in zip(rows, keys):
        e = mine.get(k)
        if e is None:
            continue
        for f in ("record_id", "store_category", "chain", "product_name", "category", "brand",
                  "currency", "barcode", "file_id", "source_bucket", "source_key", "source_etag"):
            check(r[f] == e[f], f"{k} {f}: {r[f]!r} != {e[f]!r}")
        for f in ("record_version", "quantity_on_hand", "units_sold", "source_line"):
            check(r[f] == e[f], f"{k} {f}: {r[f]} != {e[f]}")
        check(r["unit_price"] == D(e["unit_price"]), f"{k} unit_price {r['unit_price']} != {e['unit_price']}")
        cost = None if e["unit_cost"] is None else D(e["unit_cost"])
        check(r["unit_cost"] == cost, f"{k} unit_cost {r['unit_cost']} != {cost}")
        margin = None if cost is None else D(e["unit_price"]) - cost
        check(r["gross_margin"] == margin, f"{k} gross_margin {r['gross_margin']} != {margin}")
        if margin is not None and D(e["unit_price"]) != 0:
            check(abs(r["margin_pct"] - float(margin / D(e["unit_price"]))) < 1e-9, f"{k} margin_pct")
        else:
            check(r["margin_pct"] is None, f"{k} margin_pct should be null")
        if e["units_sold"] > 0:
            check(abs(r["days_of_cover"] - e["quantity_on_hand"] / e["units_sold"]) < 1e-9, f"{k} days_of_cover")
        else:
            check(r["days_of_cover"] is None, f"{k} days_of_cover should be null")
        # The category's median of the day before (point in time); none without rows then.
        before = (datetime.date.fromisoformat(k[3]) - datetime.timedelta(days=1)).isoformat()
        m = medians.get((before, e["category"]))
        got = r["price_rel_prev_day_category_median"]
        if m is not None and m != 0:
            check(got is not None and abs(got - float(D(e["unit_price"]) / m)) < 1e-9,
                  f"{k} price_rel_prev_day_category_median {got} vs {D(e['unit_price']) / m}")
            with_median += 1
        else:
            check(got is None, f"{k} price_rel_prev_day_category_median {got} without a median the day before")
        h = int.from_bytes(hashlib.sha256(e["sku"].encode()).digest()[:8], "big") % 10000
        split = "train" if h < 8000 else "validation" if h < 9000 else "test"
        check(r["split"] == split, f"{k} split {r['split']} != {split}")
        h = want_history[k]
        got = (r["units_sold_prev_day"], r["units_sold_prev_week"], r["units_sold_mean_7d"],
               r["units_sold_mean_28d"], r["days_since_price_change"])
        close = all((a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1e-9)
                    for a, b in zip(got, h))
        check(close, f"{k} history features {got} != {h} (pandas)")
        if cutoffs:
            day = k[3]
            when = "test" if day >= cutoffs[1] else "validation" if day >= cutoffs[0] else "train"
            check(r["time_split"] == when, f"{k} time_split {r['time_split']} != {when}")
        else:
            check(r["time_split"] is None, f"{k} time_split {r['time_split']} without cut-offs")
        splits[split] += 1
    if version is not None:
        continue
    manifest = json.loads((base / "_manifest.json").read_text())
    # A country's manifest is written by every version that changes the country's files.
    check(0 < manifest["table_version"] <= dt.version(),
          f"{country} manifest describes version {manifest['table_version']}, the table is at {dt.version()}")
    at = deltalake.DeltaTable(str(root), version=manifest["table_version"])
    check(sorted(f for f in at.file_uris() if f"/country={country}/" in f)
          == sorted(f for f in files if f"/country={country}/" in f),
          f"{country}: the files of the manifest's version are not the latest version's")
    check(manifest["rows"] == len(mine), f"{country} manifest rows {manifest['rows']} != {len(mine)}")
    check(manifest["splits"] == dict(splits), f"{country} manifest splits {manifest['splits']} != {dict(splits)}")
    by_day = collections.Counter(k[3] for k in mine)
    check({d: p["rows"] for d, p in manifest["partitions"].items()} == dict(by_day),
          f"{country} manifest partitions {manifest['partitions']}")
    for d, entry in manifest["partitions"].items():
        listed = sorted(f.rsplit("/", 1)[1] for f in files if f"/country={country}/business_date={d}/" in f)
        check(sorted(entry["files"]) == listed, f"{country} {d}: manifest files {entry['files']}, table {listed}")
    card = (base / "_dataset_card.md").read_text()
    check(card.count("| `") >= len(schema), f"{country} card lacks columns")
    check(f"Describes version {manifest['table_version']} " in card,
          f"{country} card does not name the manifest's version {manifest['table_version']}")
    check(not list(base.rglob("*.tmp")) and not list(base.rglob(".*")), f"{country}: temporary files left")

# DuckDB over the version's files.
con = duckdb.connect()
src = "read_parquet($files)"
n = con.execute(f"SELECT count(*) FROM {src}", {"files": files}).fetchone()[0]
check(n == len(want), f"duckdb sees {n} rows, want {len(want)}")
desc = dict((r[0], r[1]) for r in con.execute(f"DESCRIBE SELECT * FROM {src}", {"files": files}).fetchall())
check(desc.get("unit_price") == "DECIMAL(18,4)", f"duckdb unit_price {desc.get('unit_price')}")
check(desc.get("business_date") == "DATE", f"duckdb business_date {desc.get('business_date')}")
dups = con.execute(f"""SELECT count(*) FROM (SELECT country, store_id, sku, business_date, count(*) c
    FROM {src} GROUP BY ALL HAVING c > 1)""", {"files": files}).fetchone()[0]
check(dups == 0, f"duckdb finds {dups} duplicated keys")
total = con.execute(f"SELECT sum(unit_price * units_sold) FROM {src}", {"files": files}).fetchone()[0]
want_total = sum(D(r["unit_price"]) * r["units_sold"] for r in expected)
check(D(total) == want_total, f"duckdb revenue {total} != {want_total}")

# polars reads the same version through the Delta log.
frame = pl.read_delta(str(root), version=version)
check(frame.height == len(want), f"polars sees {frame.height} rows, want {len(want)}")
got_versions = {(r["country"], r["store_id"], r["sku"], r["business_date"].isoformat()): r["record_version"]
                for r in frame.select("country", "store_id", "sku", "business_date", "record_version").to_dicts()}
want_versions = {k: r["record_version"] for k, r in want.items()}
check(got_versions == want_versions, "polars: the natural keys or their versions differ")
check(frame["unit_price"].dtype == pl.Decimal(18, 4), f"polars unit_price is {frame['unit_price'].dtype}")

if problems:
    print(f"{len(problems)} problems:")
    for p in problems[:40]:
        print(" -", p)
    sys.exit(1)
print(f"ok: {len(want)} rows ({with_median} with the day before's category median) in {len(countries)} "
      f"countries at version {dt.version()}, read by deltalake "
      f"{deltalake.__version__}, pyarrow {pa.__version__}, polars {pl.__version__} and duckdb {duckdb.__version__}")

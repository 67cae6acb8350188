"""Reads a skuflow dataset root with real clients (pyarrow, DuckDB) and checks it against the
expected newest records (JSON lines written by the Rust test): declared schema and types, exactly
one row per natural key, exact values, features recomputed here with `decimal`, manifests.

Usage: python3 check_dataset.py <dataset root> <expected.jsonl>
"""
import collections
import decimal
import hashlib
import json
import pathlib
import sys

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

D = decimal.Decimal
root = pathlib.Path(sys.argv[1])
expected = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8")]
want = {(r["country"], r["store_id"], r["sku"], r["business_date"]): r for r in expected}
problems = []


def check(cond, what):
    if not cond:
        problems.append(what)


countries = sorted({r["country"] for r in expected})
check(sorted(p.name for p in root.glob("country=*")) == [f"country={c}" for c in countries],
      f"country directories {sorted(p.name for p in root.glob('country=*'))}")

for country in countries:
    base = root / f"country={country}"
    # pyarrow, Hive partitioning with the declared partition types.
    part = ds.partitioning(pa.schema([("business_date", pa.date32())]), flavor="hive")
    table = ds.dataset(str(base), format="parquet", partitioning=part).to_table()
    schema = table.schema
    types = {f.name: f.type for f in schema}
    check(types["unit_price"] == pa.decimal128(18, 4), f"unit_price is {types['unit_price']}")
    check(types["unit_cost"] == pa.decimal128(18, 4), f"unit_cost is {types['unit_cost']}")
    check(types["gross_margin"] == pa.decimal128(18, 4), f"gross_margin is {types['gross_margin']}")
    check(types["business_date"] == pa.date32(), f"business_date is {types['business_date']}")
    check(types["quantity_on_hand"] == pa.int32(), f"quantity_on_hand is {types['quantity_on_hand']}")
    check(types["source_last_modified"] == pa.timestamp("us", tz="UTC"),
          f"source_last_modified is {types['source_last_modified']}")
    for f in ("margin_pct", "days_of_cover", "price_rel_category_median"):
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
        m = medians[(k[3], e["category"])]
        if m != 0:
            check(abs(r["price_rel_category_median"] - float(D(e["unit_price"]) / m)) < 1e-9,
                  f"{k} price_rel_category_median {r['price_rel_category_median']} vs {D(e['unit_price']) / m}")
        h = int.from_bytes(hashlib.sha256(e["sku"].encode()).digest()[:8], "big") % 10000
        split = "train" if h < 8000 else "validation" if h < 9000 else "test"
        check(r["split"] == split, f"{k} split {r['split']} != {split}")
        splits[split] += 1
    manifest = json.loads((base / "_manifest.json").read_text())
    check(manifest["rows"] == len(mine), f"{country} manifest rows {manifest['rows']} != {len(mine)}")
    check(manifest["splits"] == dict(splits), f"{country} manifest splits {manifest['splits']} != {dict(splits)}")
    by_day = collections.Counter(k[3] for k in mine)
    check({d: p["rows"] for d, p in manifest["partitions"].items()} == dict(by_day),
          f"{country} manifest partitions {manifest['partitions']}")
    for d, entry in manifest["partitions"].items():
        listed = sorted(f.name for f in (base / f"business_date={d}").glob("*.parquet"))
        check(sorted(entry["files"]) == listed, f"{country} {d}: manifest files {entry['files']}, directory {listed}")
    check((base / "_dataset_card.md").read_text().count("| `") >= len(schema), f"{country} card lacks columns")
    check(not list(base.rglob("*.tmp")) and not list(base.rglob(".*")), f"{country}: temporary files left")

# DuckDB over the whole root.
con = duckdb.connect()
glob = str(root / "country=*" / "business_date=*" / "*.parquet")
n = con.execute(f"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning = true)").fetchone()[0]
check(n == len(want), f"duckdb sees {n} rows, want {len(want)}")
desc = dict((r[0], r[1]) for r in con.execute(
    f"DESCRIBE SELECT * FROM read_parquet('{glob}', hive_partitioning = true)").fetchall())
check(desc.get("unit_price") == "DECIMAL(18,4)", f"duckdb unit_price {desc.get('unit_price')}")
check(desc.get("business_date") == "DATE", f"duckdb business_date {desc.get('business_date')}")
dups = con.execute(f"""SELECT count(*) FROM (SELECT country, store_id, sku, business_date, count(*) c
    FROM read_parquet('{glob}', hive_partitioning = true) GROUP BY ALL HAVING c > 1)""").fetchone()[0]
check(dups == 0, f"duckdb finds {dups} duplicated keys")
total = con.execute(f"SELECT sum(unit_price * units_sold) FROM read_parquet('{glob}', hive_partitioning = true)").fetchone()[0]
want_total = sum(D(r["unit_price"]) * r["units_sold"] for r in expected)
check(D(total) == want_total, f"duckdb revenue {total} != {want_total}")

if problems:
    print(f"{len(problems)} problems:")
    for p in problems[:40]:
        print(" -", p)
    sys.exit(1)
print(f"ok: {len(want)} rows in {len(countries)} countries, read by pyarrow {pa.__version__} and duckdb {duckdb.__version__}")

"""Independent check of a skuflow finance report.

Reads the uploaded CSV files (in upload order, as listed in a manifest), keeps the newest
version of every natural key (country, store_id, sku, business_date) the way a later upload
replaces an earlier one, computes every daily aggregate and every total with Python's `decimal`,
converts with the rate file (a missing rate is left out and listed, never guessed), and compares
the report's daily.csv and summary.json with it to the cent.
"""

import argparse
import csv
import json
import sys
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")


def cents(x):
    return x.quantize(CENT, rounding=ROUND_HALF_UP)


def load_rows(manifest):
    newest = {}
    for f in manifest:
        with open(f["path"], newline="", encoding="utf-8-sig") as fh:
            for row in csv.DictReader(fh):
                key = (f["country"], f["store_id"], row["sku"], row["business_date"])
                newest[key] = (f, row)  # a later file, or a later line, replaces
    return newest


def aggregate(newest):
    daily = defaultdict(lambda: defaultdict(Decimal))
    for (country, store_id, _sku, date), (f, row) in newest.items():
        dims = (date, country, store_id, f["store_category"], f["chain"], row["category"], row["currency"])
        price = Decimal(row["unit_price"])
        cost = Decimal(row["unit_cost"]) if row["unit_cost"] else None
        units = int(row["units_sold"])
        stock = int(row["quantity_on_hand"])
        a = daily[dims]
        a["skus"] += 1
        a["units"] += units
        a["revenue"] += price * units
        a["stock_value_retail"] += price * stock
        if cost is not None:
            a["skus_with_cost"] += 1
            a["revenue_with_cost"] += price * units
            a["cost"] += cost * units
            a["stock_value_cost"] += cost * stock
    for a in daily.values():
        a["gross_margin"] = a["revenue_with_cost"] - a["cost"]
    return daily


def load_rates(path, reporting):
    rates = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["reporting_currency"] == reporting:
                rates[(row["date"], row["currency"])] = Decimal(row["rate"])
    return rates


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--rates", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--reporting-currency", default="EUR")
    args = ap.parse_args()
    cur = args.reporting_currency
    manifest = json.load(open(args.manifest))
    daily = aggregate(load_rows(manifest))
    rates = load_rates(args.rates, cur)

    def rate(date, currency):
        return Decimal(1) if currency == cur else rates.get((date, currency))

    errors = []

    # daily.csv, row by row.
    with open(f"{args.report}/daily.csv", newline="", encoding="utf-8") as fh:
        got = {
            (r["business_date"], r["country"], r["store_id"], r["store_category"], r["chain"], r["category"], r["currency"]): r
            for r in csv.DictReader(fh)
        }
    if set(got) != set(daily):
        errors.append(f"daily rows differ: only in report {sorted(set(got) - set(daily))[:5]}, missing {sorted(set(daily) - set(got))[:5]}")
    for dims, a in daily.items():
        r = got.get(dims)
        if r is None:
            continue
        want = {
            "skus": str(a["skus"]),
            "skus_with_cost": str(a["skus_with_cost"]),
            "units": str(a["units"]),
            "revenue": cents(a["revenue"]),
            "cost": cents(a["cost"]),
            "gross_margin": cents(a["gross_margin"]),
            "stock_value_retail": cents(a["stock_value_retail"]),
            "stock_value_cost": cents(a["stock_value_cost"]),
        }
        x = rate(dims[0], dims[6])
        want["revenue_reporting"] = cents(a["revenue"] * x) if x is not None else ""
        want["gross_margin_reporting"] = cents(a["gross_margin"] * x) if x is not None else ""
        for k, v in want.items():
            g = r[k]
            same = (g == v) if isinstance(v, str) else (g != "" and Decimal(g) == v)
            if not same:
                errors.append(f"daily {dims} {k}: report {g!r}, expected {v}")
        if (r["fx_rate"] == "") != (x is None) or (x is not None and Decimal(r["fx_rate"]) != x):
            errors.append(f"daily {dims} fx_rate: report {r['fx_rate']!r}, expected {x}")

    # summary.json: totals per country and currency, grand total, categories, missing rates.
    summary = json.load(open(f"{args.report}/summary.json"))
    totals = defaultdict(lambda: defaultdict(Decimal))
    grand = defaultdict(Decimal)
    categories = defaultdict(lambda: defaultdict(Decimal))
    missing = defaultdict(lambda: [0, Decimal(0)])
    for dims, a in daily.items():
        date, country, _store, _sc, _chain, category, currency = dims
        t = totals[(country, currency)]
        for k in ("revenue", "cost", "gross_margin", "units", "skus"):
            t[k] += a[k]
        x = rate(date, currency)
        if x is None:
            missing[(date, currency)][0] += 1
            missing[(date, currency)][1] += a["revenue"]
            continue
        t["revenue_reporting"] += a["revenue"] * x
        t["gross_margin_reporting"] += a["gross_margin"] * x
        grand["revenue"] += a["revenue"] * x
        grand["gross_margin"] += a["gross_margin"] * x
        categories[category]["revenue"] += a["revenue"] * x
        categories[category]["gross_margin"] += a["gross_margin"] * x
    got_totals = {(t["country"], t["currency"]): t for t in summary["totals"]}
    if set(got_totals) != set(totals):
        errors.append(f"countries differ: {sorted(got_totals)} vs {sorted(totals)}")
    for key, t in totals.items():
        g = got_totals.get(key, {})
        for k in ("revenue", "cost", "gross_margin", "revenue_reporting", "gross_margin_reporting"):
            if Decimal(g.get(k, "NaN")) != cents(t[k]):
                errors.append(f"total {key} {k}: report {g.get(k)}, expected {cents(t[k])}")
        for k in ("units", "skus"):
            if g.get(k) != int(t[k]):
                errors.append(f"total {key} {k}: report {g.get(k)}, expected {t[k]}")
    for k in ("revenue", "gross_margin"):
        if Decimal(summary["grand_total"][k]) != cents(grand[k]):
            errors.append(f"grand total {k}: report {summary['grand_total'][k]}, expected {cents(grand[k])}")
    got_cats = {c["name"]: c for c in summary["by_category"]}
    if set(got_cats) != set(categories):
        errors.append(f"categories differ: {sorted(got_cats)} vs {sorted(categories)}")
    for name, c in categories.items():
        for k in ("revenue", "gross_margin"):
            if Decimal(got_cats.get(name, {}).get(k, "NaN")) != cents(c[k]):
                errors.append(f"category {name} {k}: report {got_cats.get(name, {}).get(k)}, expected {cents(c[k])}")
    got_missing = {(m["date"], m["currency"]): (m["rows"], Decimal(m["revenue"])) for m in summary["missing_rates"]}
    want_missing = {k: (v[0], cents(v[1])) for k, v in missing.items()}
    if got_missing != want_missing:
        errors.append(f"missing rates: report {got_missing}, expected {want_missing}")

    if errors:
        print(f"finance check: {len(errors)} differences", file=sys.stderr)
        for e in errors[:40]:
            print("  " + e, file=sys.stderr)
        sys.exit(1)
    print(
        f"finance check: {len(daily)} daily rows, {len(totals)} country totals, {len(categories)} categories, "
        f"{len(missing)} days without a rate: equal to the cent"
    )


if __name__ == "__main__":
    main()

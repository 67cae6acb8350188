"""Writes the bad-input corpus (run once; the files are committed). Each file exercises one way an
upload goes wrong; tests/tests/corpus.rs states where each must end and why."""
import gzip, pathlib

H = "sku,product_name,category,brand,unit_price,unit_cost,currency,quantity_on_hand,units_sold,business_date,barcode"
GOOD = "A-1,Milk,dairy,Acme,1.25,0.80,EUR,10,3,2026-11-05,4006381333931"
out = pathlib.Path(__file__).parent / "bad"
files = {
    "empty.csv": b"",
    "header_only.csv": (H + "\n").encode(),
    "missing_column.csv": ("sku,product_name,category,currency,quantity_on_hand,units_sold,business_date\nA,b,c,EUR,1,1,2026-11-05\n").encode(),
    "duplicate_column.csv": (H + ",sku\n" + GOOD + ",A-2\n").encode(),
    "unbalanced_quote.csv": (H + "\n" + GOOD + "\n" + 'B-1,"Open quote never closed,dairy,,1.00,,EUR,1,1,2026-11-05,\n' + GOOD.replace("A-1", "A-3") + "\n").encode(),
    "wrong_field_count.csv": (H + "\n" + GOOD + "\nB-2,Bread,bakery\n" + GOOD.replace("A-1", "A-4") + "\n").encode(),
    "huge_field.csv": (H + "\n" + GOOD + "\nC-1," + "x" * 200_000 + ",dairy,,1.00,,EUR,1,1,2026-11-05,\n" + GOOD.replace("A-1", "A-5") + "\n").encode(),
    "not_utf8.csv": (H + "\n").encode() + "D-1,Caf\xe9,drinks,,2.00,,EUR,1,1,2026-11-05,\n".encode("latin-1"),
    "bad_values.csv": (H + "\n" + GOOD + "\n"
        + "E-1,Neg,dairy,,-1.00,,EUR,1,1,2026-11-05,\n"
        + "E-2,NaN,dairy,,abc,,EUR,1,1,2026-11-05,\n"
        + "E-3,Date,dairy,,1.00,,EUR,1,1,2026-13-45,\n"
        + "E-4,Cur,dairy,,1.00,,XXQ,1,1,2026-11-05,\n"
        + "E-5,Gtin,dairy,,1.00,,EUR,1,1,2026-11-05,4006381333932\n"
        + "\n".join(GOOD.replace("A-1", f"F-{i}") for i in range(10)) + "\n").encode(),
    "corrupt.csv.gz": gzip.compress((H + "\n" + GOOD + "\n").encode())[:30] + b"\x00garbage",
    "bomb.csv.gz": gzip.compress((H + "\n").encode() + b"0" * (8 << 20), 9),
}
out.mkdir(exist_ok=True)
for name, data in files.items():
    (out / name).write_bytes(data)
print(f"wrote {len(files)} files to {out}")

"""What a user would write instead of skuflow's ingest: csv.DictReader + json + confluent-kafka
(idempotent producer). Prints its wall time, CPU seconds and peak RSS.

Usage: python3 ingest_baseline.py <csv> <brokers> <topic>
"""
import csv, json, resource, sys, time

from confluent_kafka import Producer

path, brokers, topic = sys.argv[1:4]
t = time.perf_counter()
p = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "linger.ms": 5})
n = 0
with open(path, newline="", encoding="utf-8-sig") as f:
    for row in csv.DictReader(f):
        rec = {k.strip().lower(): (v.strip() or None) for k, v in row.items()}
        for k in ("quantity_on_hand", "units_sold"):
            rec[k] = int(rec[k])
        key = f"DE:bench:{rec['sku']}"
        while True:
            try:
                p.produce(topic, key=key, value=json.dumps(rec))
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
        n += 1
p.flush(600)
wall = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_SELF)
print(f"rows={n} wall={wall:.3f} cpu={ru.ru_utime + ru.ru_stime:.3f} maxrss_kib={ru.ru_maxrss}")

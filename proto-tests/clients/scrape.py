"""Fetches klink's admin pages for the observability tests.

  scrape.py metrics URL   every sample, parsed by the Prometheus project's own
                          text-format parser (a line it cannot parse fails)
  scrape.py get URL       the HTTP status and body

Prints one JSON line.
"""
import json
import sys
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def main():
    mode, url = sys.argv[1], sys.argv[2]
    status, content_type, body = fetch(url)
    if mode == "get":
        print(json.dumps({"status": status, "content_type": content_type, "body": body}))
        return
    families = {}
    samples = []
    for family in text_string_to_metric_families(body):
        families[family.name] = family.type
        for s in family.samples:
            samples.append([s.name, s.labels, s.value])
    print(json.dumps({"status": status, "content_type": content_type,
                      "families": families, "samples": samples}))


if __name__ == "__main__":
    main()

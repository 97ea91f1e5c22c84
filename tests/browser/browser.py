"""What the console's browser tests share: Chromium started headless with
no network beyond the broker, every request, dialog, error and console
message of each page recorded, and what the pages showed when a test fails.
"""

import json
import sys
import urllib.request
from urllib.parse import urlparse

from playwright.sync_api import expect, sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000


def submit(url, key, body):
    request = urllib.request.Request(
        f"{url}/v1/jobs",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)["id"]


class Watch:
    """Every request a page makes, and every dialog or page error."""

    def __init__(self, origin):
        self.origin = origin
        self.outside = []
        self.dialogs = []
        self.errors = []
        self.pages = []
        self.console = []

    def attach(self, page):
        self.pages.append(page)
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("request", self.request)
        page.on("dialog", self.dialog)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def request(self, request):
        parsed = urlparse(request.url)
        if f"{parsed.scheme}://{parsed.netloc}" != self.origin:
            self.outside.append(request.url)

    def dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()




def run(drive):
    """Runs `drive(setup, watch, browser)` with the setup JSON of argv[1];
    prints its report as JSON once no page reached outside the broker,
    opened a dialog or threw."""
    setup = json.loads(sys.argv[1])
    watch = Watch("{0.scheme}://{0.netloc}".format(urlparse(setup["url"])))
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=setup.get("chromium", "/usr/bin/chromium"),
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            report = drive(setup, watch, browser)
        except Exception:
            explain(setup, watch)
            raise
        browser.close()
    assert not watch.outside, f"requests outside the broker: {watch.outside}"
    assert not watch.dialogs, f"dialogs opened: {watch.dialogs}"
    assert not watch.errors, f"page errors: {watch.errors}"
    report["outside_requests"] = watch.outside
    print(json.dumps(report))


def explain(setup, watch):
    """What each page showed and said, to explain a failure."""
    for i, page in enumerate(watch.pages):
        try:
            page.screenshot(path=f"{setup['shots']}/failure-{i}.png", full_page=True)
            print(f"--- page {i} at {page.url}:\n{page.inner_text('body')}", file=sys.stderr)
        except Exception as e:  # the page may be gone
            print(f"--- page {i}: {e}", file=sys.stderr)
    print("--- browser console:\n" + "\n".join(watch.console), file=sys.stderr)
    print(f"--- page errors: {watch.errors}", file=sys.stderr)


def context(browser, watch):
    """A fresh browser profile with one page, watched."""
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    watch.attach(page)
    return ctx, page

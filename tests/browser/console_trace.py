"""Opens a traced job's page in a real headless Chromium against a broker
with authentication off and `broker.trace_link` set, and checks its link
to the job's trace.

Usage: console_trace.py SETUP_JSON: the broker's URL, the job, and the
link the page must show.
"""

from playwright.sync_api import expect

from browser import context, run


def drive(setup, watch, browser):
    _, page = context(browser, watch)
    page.goto(f"{setup['url']}/console#/jobs/{setup['job']}")
    expect(page.locator("#job-id")).to_have_text(setup["job"])
    expect(page.locator("#trace")).to_have_attribute("href", setup["link"])
    return {}


if __name__ == "__main__":
    run(drive)

"""Drives the console in a real headless Chromium, as an operator and as a
tenant would, and fails on the first thing that does not hold.

Usage: console.py SETUP_JSON, where the JSON names the broker's URL, the
keys (admin, the submitter keys of two tenants, and the id of a key to
revoke), the jobs the test prepared and the folder for screenshots. Prints a JSON report on success.
"""

from playwright.sync_api import expect

from browser import context, run, submit


def sign_in(page, url, key):
    page.goto(f"{url}/console")
    page.fill("#key", key)
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#sign-out")).to_be_visible()


def drive(setup, watch, browser):
    url, shots = setup["url"], setup["shots"]
    report = {}
    admin, page = context(browser, watch)

    # A wrong key is refused on the page; the right one signs in, and
    # the cookie it leaves is HttpOnly and SameSite=Strict.
    page.goto(f"{url}/console")
    page.screenshot(path=f"{shots}/sign-in.png")
    page.fill("#key", "sy_wrong_key")
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#sign-in .error")).to_be_visible()
    sign_in(page, url, setup["admin_key"])
    cookie = next(c for c in admin.cookies() if c["name"] == "sy_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    assert page.evaluate("document.cookie") == "", "a script can read the session cookie"

    # The queue fills during a load and the overview shows it.
    page.goto(f"{url}/console#/overview")
    expect(page.locator("#queues")).to_be_visible()
    for i in range(setup["load"]):
        submit(url, setup["acme_key"], {"model": setup["model"], "input": {"prompt": f"load {i}"}})
    queue = page.locator(f"#queues tr[data-model='{setup['model']}']")
    expect(queue.locator(".queued")).not_to_have_text("0")
    # The job to cancel waits behind the load, at the lowest priority.
    target = submit(
        url,
        setup["acme_key"],
        {"model": setup["model"], "priority": "batch", "input": {"prompt": "cancel me"}},
    )
    report["cancelled"] = target
    report["queued_seen"] = int(queue.locator(".queued").inner_text())
    # Its one node runs two at a time, whichever models it serves.
    expect(page.locator("#running-total .value")).to_have_text("2")
    expect(queue).to_contain_text("normal:")
    # Jobs ended in the last hour, by outcome: the dead job among them.
    expect(page.locator("#outcomes")).to_be_visible()
    expect(page.locator("#outcome-totals")).to_contain_text("1 failed")
    page.screenshot(path=f"{shots}/overview.png", full_page=True)

    page.click("nav a[data-view=nodes]")
    expect(page.locator("#nodes tr.node")).to_have_count(setup["nodes"])
    expect(page.locator("#nodes tr.node.ready").first).to_be_visible()
    page.screenshot(path=f"{shots}/nodes.png", full_page=True)
    # A node's name leads to the jobs that ran there.
    page.click("#nodes tr[data-node='node-a'] td:first-child a")
    on_node = page.locator("#jobs[data-filter='?node=node-a'][data-loaded]")
    expect(on_node.locator("tbody tr[data-job]").first).to_be_visible()
    nodes = set(on_node.locator("tbody tr[data-job] td:nth-child(8)").all_inner_texts())
    assert nodes == {"node-a"}, nodes

    # A queued job, found by its status, cancelled from its page.
    page.goto(f"{url}/console#/jobs?status=queued")
    page.fill("#f-id", target)
    page.click("#job-filter button[type=submit]")
    expect(page.locator("#job-id")).to_have_text(target)
    page.click("#cancel")
    expect(page.locator("h1 .badge")).to_have_text("cancelled")
    expect(page.locator("#where")).to_contain_text("Stopped: cancelled")

    # The jobs list, filtered by model, newest first.
    page.goto(f"{url}/console#/jobs")
    page.select_option("#f-status", "succeeded")
    page.click("#job-filter button[type=submit]")
    listed = page.locator("#jobs[data-filter='?status=succeeded'][data-loaded]")
    expect(listed.locator("tbody tr[data-job]").first).to_be_visible()
    statuses = listed.locator("tbody tr[data-job] .badge").all_inner_texts()
    assert statuses and set(statuses) == {"succeeded"}, statuses
    page.screenshot(path=f"{shots}/jobs.png", full_page=True)

    # The dead job's timeline: every attempt, its node and error class.
    dead = setup["dead_job"]
    page.goto(f"{url}/console#/jobs/{dead}")
    expect(page.locator("#where")).to_contain_text("Stopped: failed at attempt 3")
    expect(page.locator("#steps li.retrying")).to_have_count(2)
    expect(page.locator("#steps li.retrying").first).to_contain_text("overloaded")
    expect(page.locator("#steps li.assigned").first).to_contain_text("node-a")
    page.screenshot(path=f"{shots}/job-timeline.png", full_page=True)

    # Replayed from the dead letters.
    page.click("nav a[data-view=dead-letters]")
    row = page.locator(f"#dead-letters tr[data-job='{dead}']")
    expect(row).to_contain_text("overloaded")
    page.screenshot(path=f"{shots}/dead-letters.png", full_page=True)
    row.locator("button.replay").click()
    expect(page.locator("#replayed")).to_contain_text(f"{dead} (attempt 4)")

    # Tenants: each with its limits and keys; acme's spare key revoked.
    page.click("nav a[data-view=tenants]")
    expect(page.locator("#tenants tr[data-tenant=acme]")).to_contain_text("config")
    page.click("#tenants tr[data-tenant=acme] td:nth-child(4) a")
    keys = page.locator("#keys[data-tenant=acme]")
    spare = keys.locator(f"tr[data-key='{setup['spare_key']}']")
    expect(spare).to_contain_text("active")
    tenants = set(keys.locator("tbody tr td:nth-child(3)").all_inner_texts())
    assert tenants == {"acme"}, tenants
    page.screenshot(path=f"{shots}/tenants.png", full_page=True)
    spare.locator("button.revoke").click()
    expect(spare).to_contain_text("revoked")

    # Hostile input and metadata are shown as text and run nothing.
    page.goto(f"{url}/console#/jobs/{setup['xss_job']}")
    expect(page.locator("#metadata")).to_contain_text("<script>")
    expect(page.locator("#input")).to_contain_text("<script>window.__xss=1</script>")
    expect(page.locator("#result")).to_contain_text('"><img')
    assert page.evaluate("window.__xss") is None, "a job's data ran as script"
    assert page.locator("#input img, #input script, #metadata img, #result img, #metadata script").count() == 0
    page.goto(f"{url}/console#/jobs?tenant=globex")
    expect(page.locator(f"#jobs tr[data-job='{setup['xss_job']}']")).to_be_visible()
    assert page.evaluate("window.__xss") is None, "a job's data ran as script"

    # A write with the cookie but without the page's token is refused.
    refused = page.evaluate(
        "id => fetch(`/v1/jobs/${id}/cancel`, {method: 'POST'}).then(r => r.status)",
        setup["tenant_job"],
    )
    assert refused == 403, refused

    # A tenant's key sees its own jobs only, and no operator view.
    _, tpage = context(browser, watch)
    sign_in(tpage, url, setup["globex_key"])
    assert tpage.locator("nav a[data-view=nodes]").count() == 0
    assert tpage.locator("nav a[data-view=dead-letters]").count() == 0
    assert tpage.locator("nav a[data-view=tenants]").count() == 0
    tpage.goto(f"{url}/console#/jobs")
    listed = tpage.locator("#jobs[data-loaded]")
    expect(listed.locator(f"tr[data-job='{setup['xss_job']}']")).to_be_visible()
    tenants = set(listed.locator("tbody tr[data-job] td:nth-child(4)").all_inner_texts())
    assert tenants == {"globex"}, tenants
    tpage.goto(f"{url}/console#/jobs/{setup['tenant_job']}")
    expect(tpage.locator(".error")).to_contain_text("not_found")
    tpage.goto(f"{url}/console#/overview")
    expect(tpage.locator("#queued-total")).to_be_visible()
    # Its outcomes count its own job, not the other tenant's dead one.
    expect(tpage.locator("#outcome-totals")).to_have_text("1 succeeded")
    tpage.screenshot(path=f"{shots}/tenant-overview.png", full_page=True)

    # Signing out drops the cookie: the page asks for a key again.
    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()
    assert not [c for c in admin.cookies() if c["name"] == "sy_console" and c["value"]]
    return report


if __name__ == "__main__":
    run(drive)

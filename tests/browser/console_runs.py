"""Drives the console's workflow, model and usage views in a real headless
Chromium against a broker with authentication off (as the demo runs it).

Usage: console_runs.py SETUP_JSON: the broker's URL, the runs the test
started (one failed and compensated, one of model steps), the alias whose
rollout runs with the jobs it ran before, and the folder for screenshots.
"""

from playwright.sync_api import expect

from browser import context, run


def drive(setup, watch, browser):
    url, shots = setup["url"], setup["shots"]
    _, page = context(browser, watch)

    # With authentication off the console opens as an admin, no sign-in.
    page.goto(f"{url}/console#/runs")
    expect(page.locator("#who")).to_have_text("admin")
    failed = setup["failed_run"]
    expect(page.locator(f"#runs tr[data-run='{failed}']")).to_contain_text("failed")

    # The failed run: the step it stopped at, red in the graph; the steps
    # before it compensated; each attempt and compensation listed.
    page.click(f"#runs tr[data-run='{failed}'] a")
    expect(page.locator("#run-id")).to_have_text(failed)
    expect(page.locator("#where")).to_contain_text("Stopped at step ship")
    expect(page.locator(".graph g.step.failed[data-step=ship]")).to_have_count(1)
    expect(page.locator(".graph g.step.compensated")).to_have_count(2)
    expect(page.locator(".graph line.edge")).to_have_count(2)
    compensations = page.locator("#attempts tr[data-step=reserve]", has_text="compensation")
    expect(compensations.first).to_be_visible()
    page.screenshot(path=f"{shots}/run-graph.png", full_page=True)

    # A run of model steps links each step to its job's timeline.
    page.goto(f"{url}/console#/runs/{setup['model_run']}")
    expect(page.locator("#where")).to_contain_text("Ended succeeded")
    job = page.locator("#attempts tr[data-step=ask] a")
    job_id = job.inner_text().split(" ")[0]
    job.click()
    expect(page.locator("#job-id")).to_have_text(job_id)
    expect(page.locator("#where")).to_contain_text("Finished: succeeded")
    # Its ledger line: one attempt, charged to the run's tenant.
    expect(page.locator("#usage tr[data-attempt='1']")).to_contain_text("charged")

    # The registry: the alias, its running rollout, rolled back by hand.
    page.click("nav a[data-view=models]")
    alias = setup["alias"]
    expect(page.locator("#aliases")).to_contain_text(alias)
    rollout = page.locator(f"#rollouts tr[data-alias='{alias}']")
    expect(rollout).to_contain_text("running")
    # The guards' figures: the old version's baseline of jobs through the
    # alias, none yet of the new version's.
    figures = rollout.locator(".guards")
    expect(figures).to_contain_text(f"jobs: new 0, old {setup['baseline_jobs']}")
    expect(figures).to_contain_text("error rate: new –, old 0.0%")
    page.screenshot(path=f"{shots}/models.png", full_page=True)
    rollout.locator("button.roll-back").click()
    expect(rollout).to_contain_text("rolled_back")
    expect(rollout).to_contain_text("operator")

    # Usage: the runs' model jobs were charged.
    page.click("nav a[data-view=usage]")
    expect(page.locator("#usage tbody tr").first).to_contain_text(setup["charged_model"])
    page.screenshot(path=f"{shots}/usage.png", full_page=True)
    page.goto(f"{url}/console#/runs")
    expect(page.locator("#runs[data-loaded]")).to_be_visible()
    page.screenshot(path=f"{shots}/runs.png", full_page=True)
    return {"job": job_id}


if __name__ == "__main__":
    run(drive)

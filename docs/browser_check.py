"""Open the built site in headless Chromium (Debian's ``chromium`` and ``chromium-driver``)
and check what a reader sees: the index, the API page of ``fit`` with its rendered signature,
and a notebook's math typeset by MathJax (served by the site itself), with no error in the
browser's console on any of them. Writes a screenshot of the ``fit`` API page.

Usage: ``python docs/browser_check.py [SITE] [SCREENSHOT]`` (``site/html``,
``docs/screenshots/fit_api.png``); exits 1 on a failed check, 2 when Chromium is missing.
"""

import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER = "/usr/bin/chromedriver"
FIT = "_generated/api/ppvae.fit.html"
NOTEBOOK = "_generated/notebooks/01_vae_from_the_elbo.html"


def browser():
    """Headless Chromium driven by chromedriver, its console logged at every level."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next(p for p in CHROMIUM if Path(p).exists())
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.add_argument("--disable-dev-shm-usage")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def load(driver, page: Path, ready: str, timeout: float = 30.0):
    """Open ``page`` and wait until the script ``ready`` returns true; the console's errors."""
    driver.get(page.as_uri())
    end = time.monotonic() + timeout
    while not driver.execute_script(ready):
        if time.monotonic() > end:
            raise AssertionError(f"{page.name}: not ready after {timeout:.0f} s ({ready})")
        time.sleep(0.2)
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def check(site: Path, screenshot: Path) -> list[str]:
    """Every failed check, as a line (empty when the site is right)."""
    failures = []
    driver = browser()
    try:
        loaded = "return document.readyState === 'complete'"
        errors = load(driver, site / "index.html", loaded)
        title = driver.title
        print(f"index: title {title!r}, {len(errors)} console errors")
        failures += [f"index console: {e['message']}" for e in errors]
        if "ppvae" not in title:
            failures.append(f"index: title {title!r} does not name ppvae")

        errors = load(driver, site / FIT, loaded)
        sig = driver.find_element("id", "ppvae.fit")
        text = " ".join(sig.text.split())
        print(f"fit page: signature {text[:90]!r}..., {len(errors)} console errors")
        failures += [f"fit page console: {e['message']}" for e in errors]
        if not (sig.is_displayed() and text.startswith("ppvae.fit(model, guide, data")):
            failures.append(f"fit page: the signature of fit is not shown: {text[:120]!r}")
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
        print(f"screenshot: {screenshot}")

        typeset = "return document.querySelectorAll('mjx-container').length > 0"
        errors = load(driver, site / NOTEBOOK, typeset)
        count = driver.execute_script("return document.querySelectorAll('mjx-container').length")
        images = driver.execute_script(
            "return [...document.images].filter(i => i.complete && i.naturalWidth > 0).length"
        )
        print(f"notebook 01: {count} formulas typeset, {images} images, {len(errors)} errors")
        failures += [f"notebook console: {e['message']}" for e in errors]
    finally:
        driver.quit()
    return failures


def main(argv: list[str]) -> int:
    site = Path(argv[0]) if argv else ROOT / "site" / "html"
    screenshot = Path(argv[1]) if len(argv) > 1 else ROOT / "docs" / "screenshots" / "fit_api.png"
    if not any(Path(p).exists() for p in CHROMIUM) or not shutil.which(DRIVER):
        print("browser check: needs Debian's chromium and chromium-driver", file=sys.stderr)
        return 2
    if not (site / "index.html").exists():
        print(f"browser check: no site in {site}: run make docs first", file=sys.stderr)
        return 2
    failures = check(site.resolve(), screenshot)
    for line in failures:
        print(f"FAILED {line}")
    print("browser check: " + ("failed" if failures else "passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

# Cutover: the two commands of the README, and their pieces.
PYTHON ?= python3
DEBIAN_PACKAGES = openssh-server openssh-client apache2 rsync wrk sqlite3 sudo python3

.PHONY: install demo test lint bench

# Debian packages (only when a program is missing) and the Python requirements.
install:
	@command -v /usr/sbin/sshd /usr/sbin/apache2 rsync wrk sqlite3 sudo /usr/bin/python3 >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES) >/dev/null; }
	@$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt 2>&1 | grep -v "as the 'root' user" || true

# Start the local sandbox (two lab servers) and deploy the example site to it.
demo: install
	-@$(PYTHON) -m fabric sandbox-down >/dev/null 2>&1
	$(PYTHON) -m fabric sandbox-up
	$(PYTHON) -m fabric -H sandbox deploy
	@echo "the example site is live: http://127.0.0.1:8081/ and http://127.0.0.1:8082/"

# The whole test suite against real sshd and Apache lab servers.
test: install
	$(PYTHON) -m pytest -q tests

lint:
	ruff check . && ruff format --check .

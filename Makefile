# Cutover: the two commands of the README, and their pieces.
PYTHON ?= python3
# The Debian packages the lab and the tests need, each with the programs of it they run.
PACKAGES ?= lab/packages.txt

.PHONY: install missing-packages demo test lint bench

# Debian packages (those of a missing program) and the Python requirements.
install:
	@missing=$$($(MAKE) -s --no-print-directory missing-packages); \
	if [ -n "$$missing" ]; then \
		echo "installing the Debian packages of missing programs:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@$(PYTHON) -m pip --version >/dev/null 2>&1 || { echo "installing the Debian package python3-pip"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null; }
	@# Debian marks its Python externally managed (PEP 668): these two commands are for a machine of
	@# Cutover's own, as root, where the requirements go beside Debian's packages.
	@out=$$(PIP_BREAK_SYSTEM_PACKAGES=1 $(PYTHON) -m pip install -q --disable-pip-version-check \
		-r requirements.txt -r requirements-dev.txt 2>&1); status=$$?; \
	printf '%s\n' "$$out" | grep -v -e "as the 'root' user" -e '^$$' || true; exit $$status

# The packages of $(PACKAGES) with a program missing here: an absolute path (or glob) that matches
# no file, or a name not on PATH.
missing-packages:
	@sed -e 's/#.*//' $(PACKAGES) | while read -r package programs; do \
		for program in $$programs; do \
			case $$program in /*) ls $$program >/dev/null 2>&1 ;; *) command -v $$program >/dev/null 2>&1 ;; esac \
				|| { echo $$package; break; }; \
		done; \
	done

# Start the local sandbox (two lab servers) and deploy the example site to it.
demo: install
	-@$(PYTHON) -m fabric sandbox-down >/dev/null 2>&1
	$(PYTHON) -m fabric sandbox-up
	$(PYTHON) -m fabric -H sandbox deploy
	@echo "the example site is live: http://127.0.0.1:8081/ and http://127.0.0.1:8082/"
	@echo "maintenance mode as a visitor sees it: fab maintenance-on, then curl -i --interface 127.0.0.2 http://127.0.0.1:8081/"
	@echo "(127.0.0.1 itself is on maintenance.allow, so the health check passes during a migration, and gets the site)"

# The whole test suite against real sshd and Apache lab servers; -ra: every skip and failure
# listed with its reason (CI: .ci/run sets CUTOVER_CI=1, and a skip fails). Two workers
# (pytest-xdist): the tests wait on servers more than they compute; each file stays in one
# worker, and the files that change the machine itself share one (tests/conftest.py).
test: install
	$(PYTHON) -m pytest -q -ra -n 2 --dist loadgroup --durations=15 tests

lint:
	ruff check . && ruff format --check .

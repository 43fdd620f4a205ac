# Cutover: the two commands of the README, and their pieces.
PYTHON ?= python3
DEBIAN_PACKAGES = git openssh-server openssh-client apache2 libapache2-mod-php php-fpm php-cli rsync wrk sqlite3 sudo python3 acl iproute2 haproxy e2fsprogs mount passwd
# a program of each package above: `make install` installs the packages when any one is missing
PROGRAMS = git /usr/sbin/sshd /usr/bin/ssh /usr/sbin/apache2 /usr/bin/php rsync wrk sqlite3 sudo /usr/bin/python3 getfacl ip tc /usr/sbin/haproxy /usr/sbin/mkfs.ext4 mount /usr/sbin/useradd

.PHONY: install demo test lint bench

# Debian packages (only when a program is missing) and the Python requirements.
install:
	@missing=0; for p in $(PROGRAMS); do command -v $$p >/dev/null 2>&1 || missing=1; done; \
	ls /usr/lib/apache2/modules/libphp*.so /usr/sbin/php-fpm* >/dev/null 2>&1 || missing=1; \
	if [ $$missing = 1 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES) >/dev/null; fi
	@$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt 2>&1 | grep -v "as the 'root' user" || true

# Start the local sandbox (two lab servers) and deploy the example site to it.
demo: install
	-@$(PYTHON) -m fabric sandbox-down >/dev/null 2>&1
	$(PYTHON) -m fabric sandbox-up
	$(PYTHON) -m fabric -H sandbox deploy
	@echo "the example site is live: http://127.0.0.1:8081/ and http://127.0.0.1:8082/"
	@echo "maintenance mode as a visitor sees it: fab maintenance-on, then curl -i --interface 127.0.0.2 http://127.0.0.1:8081/"
	@echo "(127.0.0.1 itself is on maintenance.allow, so the health check passes during a migration, and gets the site)"

# The whole test suite against real sshd and Apache lab servers.
test: install
	$(PYTHON) -m pytest -q tests

lint:
	ruff check . && ruff format --check .

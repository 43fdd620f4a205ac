<?php
echo "the old script ran: the rewrite did not\n";

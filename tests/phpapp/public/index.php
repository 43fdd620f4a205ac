<?php
// The shop's front controller: every path that is no file comes here (public/.htaccess).
require __DIR__ . '/../src/App.php';
App::handle($_SERVER['REQUEST_URI'], $_SERVER['REQUEST_METHOD']);

<?php
require __DIR__ . '/../../src/App.php';
header('Content-Type: text/plain');
echo 'blog ' . RELEASE . "\n";

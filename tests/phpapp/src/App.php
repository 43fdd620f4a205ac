<?php
// A small PHP app the way real ones are laid out: code outside the document root (public/),
// secrets in .env, writable shared data in public/uploads and storage/.
const RELEASE = 'example-1';

class App
{
    public static function handle(string $uri, string $method): void
    {
        $path = parse_url($uri, PHP_URL_PATH);
        header('Content-Type: text/plain');
        if ($path === '/' || $path === '/index.php' || $path === '/legacy.php') {
            echo 'shop ' . RELEASE . "\n";
        } elseif (preg_match('#^/products/(\d+)$#', $path, $m)) {
            echo "product {$m[1]} " . RELEASE . "\n";
        } elseif ($path === '/upload' && $method === 'POST') {
            // what the app lets visitors write: public/uploads (shared, writable by the web server)
            $name = basename($_POST['name'] ?? 'upload.txt');
            $ok = file_put_contents(__DIR__ . '/../public/uploads/' . $name, $_POST['data'] ?? '', FILE_APPEND);
            if ($ok === false) {
                http_response_code(500);
            }
            echo ($ok === false ? 'could not store ' : 'stored ') . $name . "\n";
        } elseif ($path === '/pair' && $method === 'POST') {
            // two files that belong together: a backup must never hold one without the other
            $dir = __DIR__ . '/../public/uploads/pairs';
            if (!is_dir($dir)) {
                mkdir($dir);
            }
            $n = intval($_POST['n'] ?? 0) % 10;
            $value = bin2hex(random_bytes(16));
            file_put_contents("$dir/$n-a.txt", $value);
            usleep(20000);
            file_put_contents("$dir/$n-b.txt", $value);
            echo "pair $n\n";
        } elseif ($path === '/page') {
            // a page the app caches in storage/ (shared); the after_switch hook clears it
            $cache = __DIR__ . '/../storage/cache/page.txt';
            if (is_file($cache)) {
                readfile($cache);
                return;
            }
            $page = 'page ' . RELEASE . "\n";
            file_put_contents($cache, $page);
            echo $page;
        } else {
            http_response_code(404);
            echo "not found\n";
        }
    }
}

;;; driver.el --- Batch-mode test driver for keystroke.el -*- lexical-binding: t; -*-

;; Run by tests/editors/test_emacs.py:
;;   emacs --batch -l driver.el
;; with KS_FILE (a Python file), KS_OUT (where the JSON record goes),
;; KS_SERVER (the server command, JSON list), KS_LISP (the folder of
;; keystroke.el), KS_RETURN_LINE, KS_STUB_LINE (1-based lines).
;;
;; Loads keystroke.el the way a user would (load-path, require,
;; keystroke-setup), opens the file with eglot, waits for the model, then:
;; completion-at-point; a preview accepted one word with M-f then whole with
;; TAB (real key events through the preview's keymap); eglot's own code
;; action picker choosing "Implement function"; keystroke-status.  It records
;; the buffer before and after each step and what the server answered; the
;; Python test asserts.

(require 'json)
(unless (require 'eglot nil t) (package-activate-all) (require 'eglot))
(add-to-list 'load-path (getenv "KS_LISP"))
(require 'keystroke)

(defvar ks-record nil "Alist written to KS_OUT.")
(defvar ks-completion-answers nil "The server's textDocument/completion answers.")
(defvar ks-messages nil "Everything `message' printed.")

(defun ks-put (key value) (push (cons key value) ks-record))

(defun ks-finish (&optional error)
  (ks-put 'error error)
  (ks-put 'messages (vconcat (reverse ks-messages)))
  (with-temp-file (getenv "KS_OUT")
    (let ((json-encoding-pretty-print nil))
      (insert (json-encode ks-record))))
  (kill-emacs (if error 1 0)))

(advice-add 'message :around
            (lambda (orig fmt &rest args)
              (let ((text (and fmt (apply #'format-message fmt args))))
                (when text (push text ks-messages))
                (apply orig fmt args))))

;; Record what the server answers to completion requests (the test compares
;; the buffer with it).
(advice-add 'jsonrpc-request :around
            (lambda (orig conn method params &rest args)
              (let ((answer (apply orig conn method params args)))
                (when (eq method :textDocument/completion)
                  (push answer ks-completion-answers))
                answer)))

(defun ks-line () (buffer-substring-no-properties (line-beginning-position) (line-end-position)))
(defun ks-state ()
  `((text . ,(buffer-substring-no-properties (point-min) (point-max)))
    (point . ,(1- (point)))
    (line . ,(ks-line))))

(defun ks-goto-line-end (n)
  (goto-char (point-min))
  (forward-line (1- n))
  (end-of-line))

(defun ks-wait-ready (seconds)
  (let ((deadline (+ (float-time) seconds)) status)
    (while (progn (setq status (keystroke-execute "keystroke.status"))
                  (not (member (plist-get status :state) '("ready" "failed"))))
      (when (> (float-time) deadline) (error "the model did not load in %s s" seconds))
      (accept-process-output nil 0.5))
    (unless (equal (plist-get status :state) "ready")
      (error "the model failed to load: %s" (plist-get status :error)))))

(defun ks-run ()
  (setq keystroke-command (append (json-read-from-string (getenv "KS_SERVER")) nil)
        keystroke-request-timeout 120)
  (keystroke-setup)
  (find-file (getenv "KS_FILE"))
  (ks-put 'major_mode (symbol-name major-mode))
  (apply #'eglot (eglot--guess-contact))
  (let ((deadline (+ (float-time) 60)))
    (while (not (eglot-current-server))
      (when (> (float-time) deadline) (error "eglot did not connect"))
      (accept-process-output nil 0.2)))
  (ks-put 'server_class (symbol-name (eieio-object-class (eglot-current-server))))
  (ks-put 'keystroke_mode keystroke-mode)
  (ks-put 'completion_provider (and (eglot--server-capable :completionProvider) t))
  (let ((t0 (float-time)))
    (ks-wait-ready 200)
    (ks-put 'load_s (- (float-time) t0)))

  ;; 1. completion-at-point after "return m".
  (ks-goto-line-end (string-to-number (getenv "KS_RETURN_LINE")))
  (insert "m")
  (let ((before (ks-state))
        (jsonrpc-default-request-timeout 120))
    (setq ks-completion-answers nil)
    (completion-at-point)
    (ks-put 'capf `((before . ,before) (after . ,(ks-state))
                    (answers . ,(vconcat (reverse ks-completion-answers))))))

  ;; 2. Preview on a new line: M-f accepts a word, then TAB the rest.
  (end-of-line)
  (insert "\n    print(circle_c")
  (let* ((before (ks-state))
         (shown (keystroke-preview t))
         (overlay-text (and keystroke--overlay (overlay-get keystroke--overlay 'after-string))))
    (unless shown (error "no preview at %S" (ks-line)))
    (execute-kbd-macro (kbd "M-f"))
    (let ((after-word (ks-state))
          (left (keystroke-preview-text)))
      (execute-kbd-macro (kbd "TAB"))
      (ks-put 'preview `((before . ,before) (shown . ,shown)
                         (overlay . ,(substring-no-properties (or overlay-text "")))
                         (after_word . ,after-word) (left_after_word . ,left)
                         (after_tab . ,(ks-state))
                         (overlay_after_tab . ,(and keystroke--overlay t))
                         (keys_mode_after_tab . ,keystroke--preview-keys-mode)))))

  ;; 3. eglot's own code-action picker, choosing "Implement function".
  (ks-goto-line-end (string-to-number (getenv "KS_STUB_LINE")))
  (back-to-indentation)
  (let ((before (ks-state))
        (offered nil)
        (last-nonmenu-event ?\r)               ; batch: no x-popup-menu
        (jsonrpc-default-request-timeout 120))
    (cl-letf (((symbol-function 'y-or-n-p)     ; eglot confirms server-initiated edits
               (lambda (prompt) (ks-put 'confirm_prompt prompt) t))
              ((symbol-function 'completing-read)
               (lambda (_prompt collection &rest _)
                 (setq offered (mapcar #'car collection))
                 (or (cl-find-if (lambda (title) (string-prefix-p "Implement function" title)) offered)
                     (error "no Implement function action among %S" offered)))))
      (eglot-code-actions (point) (point) nil t))
    (ks-put 'action `((before . ,before) (offered . ,(vconcat offered)) (after . ,(ks-state)))))

  ;; 4. keystroke's own command for an action: a docstring.
  ;; Found by its text: the implemented body above may have moved it by any number of lines.
  (goto-char (point-min))
  (search-forward "def square_area(side):")
  (end-of-line)
  (let ((before (ks-state))
        (action (keystroke-write-docstring)))
    (ks-put 'docstring `((before . ,before) (title . ,(plist-get action :title)) (after . ,(ks-state)))))

  ;; 5. Status.
  (ks-put 'status_text (keystroke-format-status (keystroke-status)))
  (ks-put 'final_text (buffer-substring-no-properties (point-min) (point-max)))
  (set-buffer-modified-p nil)
  (ignore-errors (eglot-shutdown (eglot-current-server))))

(run-at-time (string-to-number (or (getenv "KS_DEADLINE") "240")) nil
             (lambda () (ks-finish "deadline reached")))
(condition-case err
    (progn (ks-run) (ks-finish nil))
  (error (ks-finish (error-message-string err))))

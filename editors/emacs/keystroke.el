;;; keystroke.el --- Code completion from a local model, through eglot -*- lexical-binding: t; -*-

;; Version: 0.1.0
;; Package-Requires: ((emacs "28.1") (eglot "1.9"))
;; Keywords: tools, convenience, languages
;; URL: https://github.com/keystroke/keystroke

;;; Commentary:

;; keystroke is a language server (`keystroke serve') that completes code
;; from a small transformer running locally.  This package registers it
;; with eglot and adds what eglot lacks:
;;
;; - `keystroke-setup' puts `keystroke serve' in `eglot-server-programs'
;;   for `keystroke-modes'; then `M-x eglot' (or `eglot-ensure') starts it.
;; - Completion: eglot's `completion-at-point' already shows keystroke's
;;   suggestions (the server sends completion items to clients without
;;   ghost text).
;; - Preview: eglot has no ghost text, so `keystroke-preview' asks for
;;   `textDocument/inlineCompletion' itself and shows the suggestion after
;;   point as an overlay; while it shows, TAB accepts it, M-f one word,
;;   C-e one line, M-n / M-p cycle, C-g dismisses.  `keystroke-auto-preview'
;;   shows one automatically when you stop typing.
;; - Code actions: `keystroke-implement-function', `keystroke-write-docstring',
;;   `keystroke-complete-block' (also listed by `eglot-code-actions').
;; - `keystroke-status', `keystroke-toggle', `keystroke-clear-cache'.
;;
;; Usage:
;;   (require 'keystroke)
;;   (keystroke-setup)
;;   (add-hook 'python-mode-hook #'eglot-ensure)

;;; Code:

(require 'cl-lib)
(require 'eglot)
(require 'jsonrpc)
(require 'subr-x)

(defgroup keystroke nil
  "Code completion from a local model."
  :group 'tools
  :prefix "keystroke-")

(defcustom keystroke-command '("keystroke" "serve")
  "The command that starts the server (a program and its arguments)."
  :type '(repeat string))

(defcustom keystroke-modes
  '(python-mode js-mode typescript-mode c-mode c++-mode go-mode rust-mode java-mode
    sh-mode ruby-mode lua-mode emacs-lisp-mode)
  "Major modes whose buffers keystroke serves (see `keystroke-setup')."
  :type '(repeat symbol))

(defcustom keystroke-settings nil
  "Server settings, a plist such as (:maxTokens 32 :temperature 0.2).
Keys: :model :device :threads :maxTokens :temperature :candidates
:debounceMs :contextBudget :enabledLanguages :cacheDir :cacheSizeMb, and
:engine for a remote engine, e.g. (:engine (:backend \"remote\" :url
\"http://gpu-box:8000/v1\")) (see docs/remote.md).
Sent as initializationOptions; after a change, run
`keystroke-send-settings'."
  :type 'plist)

(defcustom keystroke-request-timeout 60
  "Seconds to wait for the server (the first answer waits for the model to load)."
  :type 'number)

(defcustom keystroke-auto-preview nil
  "When non-nil, idle seconds after which a preview is shown by itself."
  :type '(choice (const :tag "Only on request" nil) number))

(defface keystroke-preview-face '((t :inherit shadow))
  "Face of the suggestion shown after point.")

;;;; The server

(defclass keystroke-server (eglot-lsp-server) ()
  :documentation "eglot's connection to `keystroke serve'.")

(defun keystroke--settings-object ()
  "`keystroke-settings' ready for JSON (an empty object when nil)."
  (or keystroke-settings eglot--{}))

(cl-defmethod eglot-initialization-options ((_server keystroke-server))
  (keystroke--settings-object))

(cl-defmethod eglot-execute-command ((_server keystroke-server) _command _arguments)
  "Code actions run the model: give them `keystroke-request-timeout'."
  (let ((jsonrpc-default-request-timeout keystroke-request-timeout))
    (cl-call-next-method)))

(defun keystroke--contact (&optional _interactive)
  "What eglot starts for `keystroke-modes': our class and `keystroke-command'."
  (cons 'keystroke-server keystroke-command))

;;;###autoload
(defun keystroke-setup ()
  "Register `keystroke serve' with eglot for `keystroke-modes'.
Buffers already managed by another server keep it: eglot runs one
server per buffer."
  (interactive)
  (setq eglot-server-programs
        (cons (cons keystroke-modes #'keystroke--contact)
              (cl-remove #'keystroke--contact eglot-server-programs :key #'cdr)))
  (add-hook 'eglot-managed-mode-hook #'keystroke--maybe-enable))

(defun keystroke--server ()
  "The keystroke server of this buffer, or an error that says what to do."
  (let ((server (eglot-current-server)))
    (unless (and server (cl-typep server 'keystroke-server))
      (user-error "keystroke: no keystroke server here; run `keystroke-setup' then M-x eglot"))
    server))

(defun keystroke--request (method params)
  "Send METHOD with PARAMS to this buffer's server; wait for the answer."
  (let ((server (keystroke--server)))
    (keystroke--flush-changes)
    (jsonrpc-request server method params :timeout keystroke-request-timeout)))

(defun keystroke--flush-changes ()
  "Send eglot's pending didChange now, so the server sees the text as it is."
  (when (fboundp 'eglot--signal-textDocument/didChange)
    (eglot--signal-textDocument/didChange)))

(defun keystroke-execute (command &rest arguments)
  "Run the server's COMMAND (a string) with ARGUMENTS; return its answer."
  (keystroke--request :workspace/executeCommand
                      (list :command command :arguments (vconcat arguments))))

(defun keystroke--show (value)
  (if (or (null value) (eq value :json-false)) "-" (format "%s" value)))

(defun keystroke-format-status (status)
  "A few lines of text describing STATUS, the answer of keystroke.status."
  (let* ((server (plist-get status :server))
         (latency (plist-get server :latency))
         (reuse (plist-get (plist-get server :reuse) :reused_ratio))
         ;; Built in reverse (each line is pushed), turned round at the end.
         (lines (list (format "model: %s  device: %s  dtype: %s"
                              (keystroke--show (plist-get status :model))
                              (keystroke--show (plist-get status :device))
                              (keystroke--show (plist-get status :dtype)))
                      (format "keystroke: %s (%s)" (keystroke--show (plist-get status :state))
                              (if (eq (plist-get status :enabled) t) "on" "off")))))
    (when-let ((err (plist-get status :error)))
      (push (format "error: %s" err) lines))
    (cl-loop for (feature stats) on latency by #'cddr
             do (push (format "%s latency: p50 %s ms  p90 %s ms  (%s requests)"
                              (substring (symbol-name feature) 1)
                              (keystroke--show (plist-get stats :p50_ms))
                              (keystroke--show (plist-get stats :p90_ms))
                              (keystroke--show (plist-get stats :count)))
                      lines))
    (when (numberp reuse)
      (push (format "KV-cache reuse: %d%% of prompt tokens" (round (* 100 reuse))) lines))
    (when-let ((acceptance (keystroke-format-acceptance (plist-get status :acceptance))))
      (push acceptance lines))
    (string-join (nreverse lines) "\n")))

(defun keystroke--percent (value)
  (if (numberp value) (format "%d%%" (round (* 100 value))) "-"))

(defun keystroke-format-acceptance (acceptance)
  "The acceptance line of ACCEPTANCE (the `acceptance' of keystroke.status), or nil.
The counts are kept by the server on this machine only."
  (when-let ((total (plist-get acceptance :total)))
    (format "acceptance: %s of %s suggestions (%s); whole %s, word %s, line %s; typed through %s; kept %s at 30 s, %s at 5 min"
            (keystroke--show (plist-get total :accepted))
            (keystroke--show (plist-get total :shown))
            (keystroke--percent (plist-get total :acceptance_rate))
            (keystroke--show (plist-get total :accepted_whole))
            (keystroke--show (plist-get total :accepted_word))
            (keystroke--show (plist-get total :accepted_line))
            (keystroke--show (plist-get total :typed_through))
            (keystroke--percent (plist-get total :kept_30s))
            (keystroke--percent (plist-get total :kept_5m)))))

(defun keystroke-status ()
  "Show the server's state: model, device, latency, cache reuse.
Return the answer."
  (interactive)
  (let ((status (keystroke-execute "keystroke.status")))
    (message "%s" (keystroke-format-status status))
    status))

(defun keystroke-toggle ()
  "Turn completions off, or on again."
  (interactive)
  (let ((answer (keystroke-execute "keystroke.toggle")))
    (message "keystroke: completions %s" (if (eq (plist-get answer :enabled) t) "on" "off"))
    answer))

(defun keystroke-clear-cache ()
  "Drop the server's caches."
  (interactive)
  (message (if (eq (keystroke-execute "keystroke.clearCache") t)
               "keystroke: caches cleared" "keystroke: the model is not loaded yet")))

(defun keystroke-send-settings ()
  "Send `keystroke-settings' to the server (workspace/didChangeConfiguration)."
  (interactive)
  (jsonrpc-notify (keystroke--server) :workspace/didChangeConfiguration
                  (list :settings (list :keystroke (keystroke--settings-object)))))

;;;; Code actions

(defun keystroke--actions-here ()
  "The server's code actions at point (or in the region)."
  (let ((beg (if (use-region-p) (region-beginning) (point)))
        (end (if (use-region-p) (region-end) (point))))
    (keystroke--server)
    (keystroke--flush-changes)
    (eglot-code-actions beg end nil nil)))

(defun keystroke-run-action (title-prefix)
  "Run the code action at point whose title starts with TITLE-PREFIX.
The model runs now; the edit is applied when it answers."
  (let* ((actions (keystroke--actions-here))
         (action (cl-find-if (lambda (a) (string-prefix-p title-prefix (plist-get a :title)))
                             actions))
         (server (keystroke--server)))
    (unless action
      (user-error "keystroke: no \"%s\" action here" title-prefix))
    (message "keystroke: %s..." (plist-get action :title))
    (let ((edit (plist-get action :edit))
          (command (plist-get action :command)))
      (when (and (not edit) (not command) (plist-get action :data))
        ;; Servers may leave the edit to codeAction/resolve.
        (let ((resolved (let ((jsonrpc-default-request-timeout keystroke-request-timeout))
                          (jsonrpc-request server :codeAction/resolve action
                                           :timeout keystroke-request-timeout))))
          (setq edit (plist-get resolved :edit) command (plist-get resolved :command))))
      ;; The user asked for this edit: the server applies it without asking again.
      (let ((eglot-confirm-server-initiated-edits nil))
        (when edit (eglot--apply-workspace-edit edit))
        (when command
          (eglot-execute-command server (intern (plist-get command :command))
                                 (plist-get command :arguments)))))
    action))

(defun keystroke-implement-function ()
  "Write the body of the stub function at point (pass, ..., TODO) with the model."
  (interactive)
  (keystroke-run-action "Implement function"))

(defun keystroke-write-docstring ()
  "Write a docstring for the function or class at point with the model."
  (interactive)
  (keystroke-run-action "Write docstring"))

(defun keystroke-complete-block ()
  "Complete the block at point with the model."
  (interactive)
  (keystroke-run-action "Complete block"))

;;;; Preview: the suggestion as an overlay after point

(defvar-local keystroke--overlay nil "The overlay showing the suggestion.")
(defvar-local keystroke--suggestions nil "Texts to insert at point, one per candidate.")
(defvar-local keystroke--index 0 "Which of `keystroke--suggestions' shows.")
(defvar-local keystroke--shown-at nil "(POINT . BUFFER-MODIFIED-TICK) when the preview was made.")
(defvar-local keystroke--idle-timer nil)

(defvar keystroke-preview-map
  (let ((map (make-sparse-keymap)))
    (define-key map (kbd "TAB") #'keystroke-accept)
    (define-key map (kbd "<tab>") #'keystroke-accept)
    (define-key map (kbd "M-f") #'keystroke-accept-word)
    (define-key map (kbd "C-e") #'keystroke-accept-line)
    (define-key map (kbd "M-n") #'keystroke-next)
    (define-key map (kbd "M-p") #'keystroke-previous)
    (define-key map (kbd "C-g") #'keystroke-dismiss)
    map)
  "Keys active while a suggestion shows.")

(define-minor-mode keystroke--preview-keys-mode
  "Internal: the keys of `keystroke-preview-map' while a suggestion shows."
  :lighter nil
  :keymap keystroke-preview-map)

(defun keystroke--item-rest (item)
  "What ITEM (an InlineCompletionItem) adds at point, or nil.
keystroke's items replace the text from the line start to point, so
their text starts with what is typed there."
  (let* ((text (plist-get item :insertText))
         (range (plist-get item :range))
         (text (if (stringp text) text (plist-get text :value)))
         (typed (if range
                    (buffer-substring-no-properties
                     (eglot--lsp-position-to-point (plist-get range :start)) (point))
                  "")))
    (when (and (stringp text) (string-prefix-p typed text))
      (let ((rest (substring text (length typed))))
        (unless (string-blank-p rest) rest)))))

(defun keystroke--fetch (kind)
  "Ask for inline completions (KIND 1: invoked, several; 2: automatic, one).
Return the texts to insert at point."
  (let* ((answer (keystroke--request
                  :textDocument/inlineCompletion
                  (append (eglot--TextDocumentPositionParams)
                          (list :context (list :triggerKind kind)))))
         (items (append (if (vectorp answer) answer (plist-get answer :items)) nil)))
    (delq nil (mapcar #'keystroke--item-rest items))))

(defun keystroke--render ()
  (keystroke--hide-overlay)
  (when-let ((text (nth keystroke--index keystroke--suggestions)))
    (let ((ov (make-overlay (point) (point) nil nil t))
          (shown (copy-sequence text)))
      (when (> (length keystroke--suggestions) 1)
        (setq shown (concat shown (format " [%d/%d]" (1+ keystroke--index)
                                          (length keystroke--suggestions)))))
      (add-face-text-property 0 (length shown) 'keystroke-preview-face nil shown)
      (put-text-property 0 1 'cursor t shown)
      (overlay-put ov 'after-string shown)
      (overlay-put ov 'keystroke t)
      (overlay-put ov 'priority 100)
      (setq keystroke--overlay ov
            keystroke--shown-at (cons (point) (buffer-modified-tick)))
      (keystroke--preview-keys-mode 1))))

(defun keystroke--hide-overlay ()
  (when (overlayp keystroke--overlay)
    (delete-overlay keystroke--overlay))
  (setq keystroke--overlay nil))

(defun keystroke-preview (&optional automatic)
  "Show the model's suggestion after point (several to cycle through).
With AUTOMATIC, ask for one only (what the idle preview does).
Return the suggestion shown, or nil."
  (interactive)
  (keystroke-dismiss)
  (let ((texts (keystroke--fetch (if automatic 2 1))))
    (setq keystroke--suggestions texts keystroke--index 0)
    (if texts
        (keystroke--render)
      (when (called-interactively-p 'interactive)
        (message "keystroke: no suggestion here")))
    (car texts)))

(defun keystroke-preview-text ()
  "The suggestion showing after point, or nil."
  (and (overlayp keystroke--overlay)
       (nth keystroke--index keystroke--suggestions)))

(defun keystroke-dismiss ()
  "Hide the suggestion."
  (interactive)
  (keystroke--hide-overlay)
  (setq keystroke--suggestions nil keystroke--index 0 keystroke--shown-at nil)
  (when keystroke--preview-keys-mode (keystroke--preview-keys-mode -1)))

(defun keystroke--accept-part (pick)
  "Insert the part of the shown suggestion that PICK (a function of it) gives."
  (let ((text (keystroke-preview-text)))
    (unless text (user-error "keystroke: no suggestion shows"))
    (let* ((part (funcall pick text))
           (rest (substring text (length part))))
      (keystroke--hide-overlay)
      (insert part)
      (if (string-empty-p rest)
          (keystroke-dismiss)
        ;; Keep showing what is left of this suggestion.
        (setq keystroke--suggestions (list rest) keystroke--index 0)
        (keystroke--render))
      part)))

(defun keystroke-next-word (text)
  "The next word of TEXT, with the whitespace before it."
  (if (string-match "\\`[ \t\n]*\\(?:[[:alnum:]_]+\\|[^[:alnum:]_ \t\n]+\\)" text)
      (match-string 0 text)
    text))

(defun keystroke-next-line (text)
  "The rest of the current line of TEXT; at a line break, the next line."
  (if (string-prefix-p "\n" text)
      (concat "\n" (car (split-string (substring text 1) "\n")))
    (car (split-string text "\n"))))

(defun keystroke-accept ()
  "Insert the whole suggestion."
  (interactive)
  (keystroke--accept-part #'identity))

(defun keystroke-accept-word ()
  "Insert the next word of the suggestion."
  (interactive)
  (keystroke--accept-part #'keystroke-next-word))

(defun keystroke-accept-line ()
  "Insert the rest of the current line of the suggestion."
  (interactive)
  (keystroke--accept-part #'keystroke-next-line))

(defun keystroke-next (&optional step)
  "Show the next suggestion (asks for several when only one shows)."
  (interactive)
  (when (<= (length keystroke--suggestions) 1)
    (let ((here (point)))
      (setq keystroke--suggestions (keystroke--fetch 1) keystroke--index -1)
      (goto-char here)))
  (when keystroke--suggestions
    (setq keystroke--index (mod (+ keystroke--index (or step 1)) (length keystroke--suggestions)))
    (keystroke--render)))

(defun keystroke-previous ()
  "Show the previous suggestion."
  (interactive)
  (keystroke-next -1))

(defun keystroke--post-command ()
  "Drop a preview that no longer matches point or the text; plan the next one."
  (when (and keystroke--shown-at
             (not (memq this-command '(keystroke-accept keystroke-accept-word keystroke-accept-line
                                      keystroke-next keystroke-previous keystroke-preview)))
             (not (equal keystroke--shown-at (cons (point) (buffer-modified-tick)))))
    (keystroke-dismiss))
  (when keystroke-auto-preview
    (when keystroke--idle-timer (cancel-timer keystroke--idle-timer))
    (when (memq this-command '(self-insert-command newline))
      (setq keystroke--idle-timer
            (run-with-idle-timer keystroke-auto-preview nil #'keystroke--auto-preview
                                 (current-buffer))))))

(defun keystroke--auto-preview (buffer)
  (when (and (buffer-live-p buffer) (eq buffer (current-buffer)) (not keystroke--overlay))
    (condition-case err
        (keystroke-preview t)
      (error (message "keystroke: %s" (error-message-string err))))))

(defvar keystroke-mode-map (make-sparse-keymap)
  "Keys of `keystroke-mode', empty by default; e.g. bind `keystroke-preview'.")

(define-minor-mode keystroke-mode
  "Preview keystroke's suggestions in this buffer (eglot must manage it)."
  :lighter " ks"
  :keymap keystroke-mode-map
  (if keystroke-mode
      (add-hook 'post-command-hook #'keystroke--post-command nil t)
    (remove-hook 'post-command-hook #'keystroke--post-command t)
    (keystroke-dismiss)))

(defun keystroke--maybe-enable ()
  "On `eglot-managed-mode-hook': `keystroke-mode' in buffers keystroke serves."
  (let ((server (eglot-current-server)))
    (keystroke-mode (if (and (eglot-managed-p) server (cl-typep server 'keystroke-server)) 1 -1))))

(provide 'keystroke)
;;; keystroke.el ends here


#compdef tiqo

_tiqo_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _TIQO_COMPLETE=complete_zsh tiqo)
}

compdef _tiqo_completion tiqo

